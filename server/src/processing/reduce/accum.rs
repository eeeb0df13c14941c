//! Streaming accumulators of the reductions, one slot per (group, cell) of an output
//! block (pure functions): float64 for decoded (float) inputs and for the float results of
//! integers (`mean`, `std`, `var`, `median`, as NumPy computes them); exact integers for
//! `sum`, `min`, `max`, `first`, `last` of integer inputs ([`Acc::new_int`]), since NumPy
//! keeps those integer (a float64 sum would round above 2^53 and never wrap).
//!
//! xarray's rules: NaN is skipped (`skipna` for floats); an empty or all-NaN slot gives
//! NaN for `mean`, `std`, `var`, `median`, `min`, `max`, `first`, `last`, 0 for `sum` and
//! `count`; `std`/`var` use `ddof=0`. Accumulators of consecutive stretches of the axis
//! merge ([`Acc::merge`], the later stretch on the right), so source chunks can be reduced
//! in parallel and combined in order.
//!
//! Memory: one slot holds at most three numbers, except `median`, which keeps every
//! non-NaN value of its group until the block is finished (a median cannot be streamed).

use cloudify_crds::Reduce;

/// The state of the slots of one output block (serialisable: the partial result a compute
/// worker sends back, see [`crate::processing::exec`]; buffers as packed byte strings,
/// [`super::wire`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Acc {
    /// `sum` and `mean`: non-NaN count and sum.
    Sum {
        /// Non-NaN values seen per slot.
        #[serde(with = "super::wire::counts")]
        n: Vec<u64>,
        /// Their sum.
        #[serde(with = "super::wire::f64s")]
        sum: Vec<f64>,
    },
    /// `count`.
    Count(#[serde(with = "super::wire::counts")] Vec<u64>),
    /// `std` and `var`: Welford's running mean and sum of squared deviations.
    Moments {
        /// Non-NaN values seen per slot.
        #[serde(with = "super::wire::counts")]
        n: Vec<u64>,
        /// Their mean.
        #[serde(with = "super::wire::f64s")]
        mean: Vec<f64>,
        /// Sum of squared deviations from the mean.
        #[serde(with = "super::wire::f64s")]
        m2: Vec<f64>,
    },
    /// `min`, `max`, `first`, `last`: one value per slot, NaN until one is seen.
    Pick(Reduce, #[serde(with = "super::wire::f64s")] Vec<f64>),
    /// `median`: the values of each slot.
    Values(#[serde(with = "super::wire::f64_lists")] Vec<Vec<f64>>),
    /// `sum` of integers: i128 holds any int64 or uint64 value and sums of up to 2^63 of
    /// them; [`Acc::finish_ints`] wraps the sum to 64 bits as NumPy's int64/uint64
    /// accumulator does (a wrapped sum is the exact sum modulo 2^64, in any order).
    IntSum(#[serde(with = "super::wire::i128s")] Vec<i128>),
    /// `min`, `max`, `first`, `last` of integers: `None` until a value is seen.
    IntPick(Reduce, Vec<Option<i128>>),
}

impl Acc {
    /// Empty accumulators for `slots` slots.
    pub fn new(r: Reduce, slots: usize) -> Self {
        match r {
            Reduce::Mean | Reduce::Sum => Acc::Sum {
                n: vec![0; slots],
                sum: vec![0.0; slots],
            },
            Reduce::Count => Acc::Count(vec![0; slots]),
            Reduce::Std | Reduce::Var => Acc::Moments {
                n: vec![0; slots],
                mean: vec![0.0; slots],
                m2: vec![0.0; slots],
            },
            Reduce::Min | Reduce::Max | Reduce::First | Reduce::Last => Acc::Pick(r, vec![f64::NAN; slots]),
            Reduce::Median => Acc::Values(vec![Vec::new(); slots]),
        }
    }

    /// Empty accumulators of an integer input (not decoded to floats): exact integers for
    /// `sum`, `min`, `max`, `first`, `last`, the float64 ones of [`Acc::new`] otherwise.
    pub fn new_int(r: Reduce, slots: usize) -> Self {
        match r {
            Reduce::Sum => Acc::IntSum(vec![0; slots]),
            Reduce::Min | Reduce::Max | Reduce::First | Reduce::Last => Acc::IntPick(r, vec![None; slots]),
            _ => Acc::new(r, slots),
        }
    }

    /// Adds integers `xs` to the slots from `slot` on, later in axis order (as [`Acc::add`];
    /// integers have no NaN to skip: every value counts).
    pub fn add_int(&mut self, slot: usize, xs: &[i128]) {
        let range = slot..slot + xs.len();
        match self {
            Acc::IntSum(sum) => {
                for (s, x) in sum[range].iter_mut().zip(xs) {
                    *s = s.wrapping_add(*x);
                }
            }
            Acc::IntPick(r, v) => {
                for (v, x) in v[range].iter_mut().zip(xs) {
                    let take = match (*r, *v) {
                        (_, None) | (Reduce::Last, _) => true,
                        (Reduce::Min, Some(c)) => *x < c,
                        (Reduce::Max, Some(c)) => *x > c,
                        _ => false,
                    };
                    if take {
                        *v = Some(*x);
                    }
                }
            }
            other => {
                #[allow(clippy::cast_precision_loss)]
                let f: Vec<f64> = xs.iter().map(|x| *x as f64).collect();
                other.add(slot, &f);
            }
        }
    }

    /// The integer results (`None`: nothing seen), or the float accumulators back (for
    /// [`Acc::finish`]). Sums wrap to 64 bits, unsigned (`uint64`) when `unsigned`, as NumPy's.
    pub fn finish_ints(self, unsigned: bool) -> Result<Vec<Option<i128>>, Self> {
        match self {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Acc::IntSum(sum) => Ok(sum
                .into_iter()
                .map(|s| {
                    Some(if unsigned {
                        i128::from(s as u64)
                    } else {
                        i128::from(s as i64)
                    })
                })
                .collect()),
            Acc::IntPick(_, v) => Ok(v),
            other => Err(other),
        }
    }

    /// Adds `xs` to the slots from `slot` on (one value each), later in axis order than
    /// everything added to those slots before. Generic over the decoded type so float32
    /// blocks are widened value by value in the loop, not copied into a float64 buffer.
    pub fn add<T: Copy + Into<f64>>(&mut self, slot: usize, xs: &[T]) {
        let range = slot..slot + xs.len();
        match self {
            Acc::Sum { n, sum } => {
                // branch-free (the hot loop of a groupby mean): a NaN adds 0 and counts 0
                for ((n, s), x) in n[range.clone()].iter_mut().zip(&mut sum[range]).zip(xs) {
                    let x: f64 = (*x).into();
                    let ok = !x.is_nan();
                    *n += u64::from(ok);
                    *s += if ok { x } else { 0.0 };
                }
            }
            Acc::Count(n) => {
                for (n, x) in n[range].iter_mut().zip(xs) {
                    let x: f64 = (*x).into();
                    *n += u64::from(!x.is_nan());
                }
            }
            Acc::Moments { n, mean, m2 } => {
                let it = n[range.clone()]
                    .iter_mut()
                    .zip(&mut mean[range.clone()])
                    .zip(&mut m2[range]);
                for (((n, mean), m2), x) in it.zip(xs) {
                    let x: f64 = (*x).into();
                    if !x.is_nan() {
                        *n += 1;
                        let d = x - *mean;
                        *mean += d / *n as f64;
                        *m2 += d * (x - *mean);
                    }
                }
            }
            Acc::Pick(r, v) => {
                for (v, x) in v[range].iter_mut().zip(xs) {
                    let x: f64 = (*x).into();
                    if x.is_nan() {
                        continue;
                    }
                    let take = match r {
                        Reduce::Min => v.is_nan() || x < *v,
                        Reduce::Max => v.is_nan() || x > *v,
                        Reduce::First => v.is_nan(),
                        _ => true,
                    };
                    if take {
                        *v = x;
                    }
                }
            }
            Acc::Values(v) => {
                for (v, x) in v[range].iter_mut().zip(xs) {
                    let x: f64 = (*x).into();
                    if !x.is_nan() {
                        v.push(x);
                    }
                }
            }
            // integer accumulators take integers only (`add_int`)
            Acc::IntSum(_) | Acc::IntPick(..) => {}
        }
    }

    /// The kind (variant and, for picks, reduction) and slot count, `None` for the count
    /// when the buffers disagree (a malformed partial from elsewhere).
    fn shape(&self) -> (u8, Option<Reduce>, Option<usize>) {
        let same = |lens: &[usize]| match lens {
            [first, rest @ ..] if rest.iter().all(|l| l == first) => Some(*first),
            _ => None,
        };
        match self {
            Acc::Sum { n, sum } => (0, None, same(&[n.len(), sum.len()])),
            Acc::Count(n) => (1, None, Some(n.len())),
            Acc::Moments { n, mean, m2 } => (2, None, same(&[n.len(), mean.len(), m2.len()])),
            Acc::Pick(r, v) => (3, Some(*r), Some(v.len())),
            Acc::Values(v) => (4, None, Some(v.len())),
            Acc::IntSum(v) => (5, None, Some(v.len())),
            Acc::IntPick(r, v) => (6, Some(*r), Some(v.len())),
        }
    }

    /// The number of slots (`None` for ragged buffers).
    pub fn slots(&self) -> Option<usize> {
        self.shape().2
    }

    /// Combines with the accumulators of the stretch of the axis right after this one.
    pub fn merge(&mut self, mut later: Acc) {
        self.merge_from(&mut later);
    }

    /// [`Acc::merge`] without taking `later` (its state afterwards is unspecified: call
    /// [`Acc::reset`] before using it again), so one partial's buffers serve every run.
    /// Accumulators of another kind or size are the caller's bug: only the common slots of
    /// the same kind are merged.
    pub fn merge_from(&mut self, later: &mut Acc) {
        let len = self.slots().unwrap_or(0).min(later.slots().unwrap_or(0));
        // cannot fail: same range in both, within both
        let _ = self.merge_range(0, later, 0, len);
    }

    /// Merges slots `[from, from+len)` of `later` (the stretch of the axis right after
    /// this one) into slots `[at, at+len)` of `self`: how a [`Partial`] holding some of a
    /// block's groups lands in the block's slots. `later`'s slots are left unspecified
    /// (`median`'s values are moved, not copied). The ranges come from a partial sent by a
    /// compute worker, so they are checked, never trusted to index.
    pub fn merge_range(
        &mut self,
        at: usize,
        later: &mut Acc,
        from: usize,
        len: usize,
    ) -> Result<(), MergeError> {
        fn span<T>(v: &mut [T], at: usize, len: usize) -> Result<&mut [T], MergeError> {
            let total = v.len();
            at.checked_add(len)
                .and_then(|end| v.get_mut(at..end))
                .ok_or(MergeError::OutOfRange {
                    at,
                    len,
                    slots: total,
                })
        }
        match (self, later) {
            (Acc::Sum { n, sum }, Acc::Sum { n: n2, sum: s2 }) => {
                let (n, sum) = (span(n, at, len)?, span(sum, at, len)?);
                let (n2, s2) = (span(n2, from, len)?, span(s2, from, len)?);
                n.iter_mut().zip(n2.iter()).for_each(|(a, b)| *a += b);
                sum.iter_mut().zip(s2.iter()).for_each(|(a, b)| *a += b);
            }
            (Acc::Count(n), Acc::Count(n2)) => {
                let (n, n2) = (span(n, at, len)?, span(n2, from, len)?);
                n.iter_mut().zip(n2.iter()).for_each(|(a, b)| *a += b);
            }
            (
                Acc::Moments { n, mean, m2 },
                Acc::Moments {
                    n: nb,
                    mean: mb,
                    m2: m2b,
                },
            ) => {
                let (n, mean, m2) = (span(n, at, len)?, span(mean, at, len)?, span(m2, at, len)?);
                let (nb, mb, m2b) = (span(nb, from, len)?, span(mb, from, len)?, span(m2b, from, len)?);
                // Chan et al.'s pairwise update
                for i in 0..len {
                    let (na, nb) = (n[i], nb[i]);
                    if nb == 0 {
                        continue;
                    }
                    if na == 0 {
                        (n[i], mean[i], m2[i]) = (nb, mb[i], m2b[i]);
                        continue;
                    }
                    let total = (na + nb) as f64;
                    let d = mb[i] - mean[i];
                    mean[i] += d * nb as f64 / total;
                    m2[i] += m2b[i] + d * d * na as f64 * nb as f64 / total;
                    n[i] = na + nb;
                }
            }
            (Acc::Pick(r, v), Acc::Pick(r2, v2)) if r == r2 => {
                let (v, v2) = (span(v, at, len)?, span(v2, from, len)?);
                for (a, b) in v.iter_mut().zip(v2.iter().copied()) {
                    if b.is_nan() {
                        continue;
                    }
                    let take = match r {
                        Reduce::Min => a.is_nan() || b < *a,
                        Reduce::Max => a.is_nan() || b > *a,
                        Reduce::First => a.is_nan(),
                        _ => true,
                    };
                    if take {
                        *a = b;
                    }
                }
            }
            (Acc::Values(v), Acc::Values(v2)) => {
                let (v, v2) = (span(v, at, len)?, span(v2, from, len)?);
                v.iter_mut().zip(v2.iter_mut()).for_each(|(a, b)| a.append(b));
            }
            (Acc::IntSum(s), Acc::IntSum(s2)) => {
                let (s, s2) = (span(s, at, len)?, span(s2, from, len)?);
                s.iter_mut()
                    .zip(s2.iter())
                    .for_each(|(a, b)| *a = a.wrapping_add(*b));
            }
            (Acc::IntPick(r, v), Acc::IntPick(r2, v2)) if r == r2 => {
                let (v, v2) = (span(v, at, len)?, span(v2, from, len)?);
                for (a, b) in v.iter_mut().zip(v2.iter().copied()) {
                    let Some(b) = b else { continue };
                    let take = match (*r, *a) {
                        (_, None) | (Reduce::Last, _) => true,
                        (Reduce::Min, Some(c)) => b < c,
                        (Reduce::Max, Some(c)) => b > c,
                        _ => false,
                    };
                    if take {
                        *a = Some(b);
                    }
                }
            }
            _ => return Err(MergeError::Kind),
        }
        Ok(())
    }

    /// Back to the empty state of [`Acc::new`] / [`Acc::new_int`], keeping the buffers
    /// (refilling them is far cheaper than fresh pages from the kernel for a large block).
    pub fn reset(&mut self) {
        match self {
            Acc::Sum { n, sum } => {
                n.fill(0);
                sum.fill(0.0);
            }
            Acc::Count(n) => n.fill(0),
            Acc::Moments { n, mean, m2 } => {
                n.fill(0);
                mean.fill(0.0);
                m2.fill(0.0);
            }
            Acc::Pick(_, v) => v.fill(f64::NAN),
            Acc::Values(v) => v.iter_mut().for_each(Vec::clear),
            Acc::IntSum(v) => v.fill(0),
            Acc::IntPick(_, v) => v.fill(None),
        }
    }

    /// [`Acc::reset`] to `slots` slots, keeping the buffers' memory: the partials of
    /// consecutive runs hold different numbers of groups.
    pub fn reset_to(&mut self, slots: usize) {
        match self {
            Acc::Sum { n, sum } => {
                n.clear();
                n.resize(slots, 0);
                sum.clear();
                sum.resize(slots, 0.0);
            }
            Acc::Count(n) => {
                n.clear();
                n.resize(slots, 0);
            }
            Acc::Moments { n, mean, m2 } => {
                n.clear();
                n.resize(slots, 0);
                mean.clear();
                mean.resize(slots, 0.0);
                m2.clear();
                m2.resize(slots, 0.0);
            }
            Acc::Pick(_, v) => {
                v.clear();
                v.resize(slots, f64::NAN);
            }
            Acc::Values(v) => {
                v.truncate(slots);
                v.iter_mut().for_each(Vec::clear);
                v.resize_with(slots, Vec::new);
            }
            Acc::IntSum(v) => {
                v.clear();
                v.resize(slots, 0);
            }
            Acc::IntPick(_, v) => {
                v.clear();
                v.resize(slots, None);
            }
        }
    }

    /// The reduced values, one per slot (`count` as whole numbers).
    ///
    /// `float32`: the result is served as float32, which xarray (numpy) computes in float32
    /// too, so an intermediate that overflows float32 there makes the result infinite here
    /// as well: a sum beyond `f32::MAX` gives an infinite `mean`, and a sum of squared
    /// deviations beyond it (CMIP6 files holding undeclared 9.97e36 fill values do this)
    /// an infinite `var` *and* `std`, although the float64 square root would fit.
    pub fn finish(self, r: Reduce, float32: bool) -> Vec<f64> {
        let overflows = |x: f64| float32 && x.abs() > f64::from(f32::MAX);
        match self {
            Acc::Sum { n, sum } => match r {
                Reduce::Mean => n
                    .iter()
                    .zip(sum)
                    .map(|(n, s)| match *n {
                        0 => f64::NAN,
                        _ if overflows(s) => f64::INFINITY.copysign(s),
                        n => s / n as f64,
                    })
                    .collect(),
                _ => sum,
            },
            Acc::Count(n) => n.into_iter().map(|n| n as f64).collect(),
            Acc::Moments { n, mean, m2 } => n
                .iter()
                .zip(mean)
                .zip(m2)
                .map(|((n, mean), m2)| {
                    if *n == 0 {
                        f64::NAN
                    } else if overflows(m2) || overflows(mean * *n as f64) {
                        f64::INFINITY
                    } else if r == Reduce::Std {
                        (m2 / *n as f64).sqrt()
                    } else {
                        m2 / *n as f64
                    }
                })
                .collect(),
            Acc::Pick(_, v) => v,
            Acc::Values(v) => v.into_iter().map(median).collect(),
            #[allow(clippy::cast_precision_loss)]
            Acc::IntSum(s) => s.into_iter().map(|x| x as f64).collect(),
            #[allow(clippy::cast_precision_loss)]
            Acc::IntPick(_, v) => v.into_iter().map(|x| x.map_or(f64::NAN, |x| x as f64)).collect(),
        }
    }
}

/// Why a partial does not fit the block it is merged into (it came from a compute worker
/// of another configuration, or is corrupt): the request fails instead of serving a mix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// Another accumulator kind or reduction.
    #[error("accumulators of another reduction")]
    Kind,
    /// Slots beyond the buffers.
    #[error("slots [{at}, {at}+{len}) outside accumulators of {slots} slots")]
    OutOfRange {
        /// First slot.
        at: usize,
        /// Number of slots.
        len: usize,
        /// Slots there are.
        slots: usize,
    },
    /// Groups not ascending, or not groups of the block.
    #[error("groups {groups:?} are not ascending groups of a block of {k}")]
    Groups {
        /// The partial's groups (at most the first few).
        groups: Vec<u32>,
        /// Groups of the block.
        k: usize,
    },
    /// As many slots as the groups need, or not.
    #[error("{slots:?} slots for {groups} groups of {per_group} cells")]
    Size {
        /// Slots the partial holds (`None`: ragged buffers).
        slots: Option<usize>,
        /// Groups it holds.
        groups: usize,
        /// Cells per group (the block's other dimensions).
        per_group: usize,
    },
}

/// The accumulators of one run of source chunks for the groups of the output block that
/// the run's rows belong to, and only those: a run covers a stretch of the reduced axis,
/// which for a `groupby(time.month)` of a year touches one or two of the twelve months, so
/// carrying the block's every group would send back (from a compute worker) mostly empty
/// slots — more bytes than the source chunks read. Laid out as the block (`outer` ×
/// groups × `inner`) with only [`Partial::groups`] along the grouped axis.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Partial {
    /// The groups held, as offsets into the block's groups, strictly ascending.
    pub groups: Vec<u32>,
    /// Their accumulators: slot `(o * groups.len() + j) * inner + i` is the block's slot
    /// `(o * k + groups[j]) * inner + i`.
    pub acc: Acc,
}

impl Partial {
    /// An upper bound of its encoded size in bytes (the packed buffers of
    /// [`super::wire`] and their headers), to encode it into one allocation.
    pub fn size_hint(&self) -> usize {
        let slots = self.acc.slots().unwrap_or(0);
        let body = match &self.acc {
            Acc::Count(_) | Acc::Pick(..) => 8 * slots,
            Acc::Sum { .. } | Acc::IntSum(_) => 16 * slots,
            // a tag and a varint of up to 19 bytes
            Acc::IntPick(..) => 20 * slots,
            Acc::Moments { .. } => 24 * slots,
            Acc::Values(v) => 8 * slots + 8 * v.iter().map(Vec::len).sum::<usize>(),
        };
        64 + 5 * self.groups.len() + body
    }

    /// Merges into `block`, the accumulators of an output block of `outer` × `k` ×
    /// `inner` slots, as the stretch of the axis after everything merged into it before.
    /// Slots of groups the partial does not hold are left as they are (the partial would
    /// have held empty accumulators there, which merge as no-ops). Everything is checked
    /// before a slot changes: a partial that does not fit leaves `block` untouched.
    pub fn merge_into(
        &mut self,
        block: &mut Acc,
        (outer, k, inner): (usize, usize, usize),
    ) -> Result<(), MergeError> {
        let m = self.groups.len();
        let ascending = self.groups.windows(2).all(|w| w[0] < w[1]);
        if !ascending || self.groups.last().is_some_and(|g| *g as usize >= k) {
            return Err(MergeError::Groups {
                groups: self.groups.iter().copied().take(16).collect(),
                k,
            });
        }
        let (mine, theirs) = (self.acc.shape(), block.shape());
        if (mine.0, mine.1) != (theirs.0, theirs.1) {
            return Err(MergeError::Kind);
        }
        let size = |groups: usize| outer.checked_mul(groups)?.checked_mul(inner);
        if mine.2.is_none() || mine.2 != size(m) || theirs.2 != size(k) {
            return Err(MergeError::Size {
                slots: mine.2,
                groups: m,
                per_group: outer.saturating_mul(inner),
            });
        }
        for o in 0..outer {
            // consecutive groups are one range of slots (one call per run of them)
            let mut j = 0;
            while j < m {
                let mut e = j + 1;
                while e < m && self.groups[e] == self.groups[e - 1] + 1 {
                    e += 1;
                }
                let at = (o * k + self.groups[j] as usize) * inner;
                block.merge_range(at, &mut self.acc, (o * m + j) * inner, (e - j) * inner)?;
                j = e;
            }
        }
        Ok(())
    }
}

/// numpy's median: the middle value, or the mean of the two middle ones; NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    let (_, hi, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let hi = *hi;
    if n % 2 == 1 {
        return hi;
    }
    // the largest of the lower half
    let lo = v[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    lo + (hi - lo) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_gives_the_empty_accumulator_back() {
        for r in [
            Reduce::Mean,
            Reduce::Count,
            Reduce::Std,
            Reduce::Max,
            Reduce::Median,
        ] {
            let mut a = Acc::new(r, 3);
            a.add(0, &[1.0f64, 2.0, f64::NAN]);
            a.reset();
            let fresh = Acc::new(r, 3);
            assert_eq!(format!("{a:?}"), format!("{fresh:?}"), "{r:?}");
        }
        let mut a = Acc::new_int(Reduce::Sum, 2);
        a.add_int(0, &[5, 7]);
        a.reset();
        assert_eq!(a, Acc::new_int(Reduce::Sum, 2));
    }

    const NAN: f64 = f64::NAN;

    fn reduce(r: Reduce, xs: &[f64]) -> f64 {
        let mut a = Acc::new(r, 1);
        for x in xs {
            a.add(0, &[*x]);
        }
        a.finish(r, false)[0]
    }

    fn same(a: f64, b: f64) -> bool {
        (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn xarray_rules_for_nan_and_empty() {
        let xs = [1.0, NAN, 4.0, 2.0, NAN, 8.0];
        let want = [
            (Reduce::Mean, 3.75),
            (Reduce::Sum, 15.0),
            (Reduce::Min, 1.0),
            (Reduce::Max, 8.0),
            (Reduce::Count, 4.0),
            (Reduce::Var, 7.1875),
            (Reduce::Std, 7.1875f64.sqrt()),
            (Reduce::Median, 3.0),
            (Reduce::First, 1.0),
            (Reduce::Last, 8.0),
        ];
        for (r, w) in want {
            assert!(same(reduce(r, &xs), w), "{r:?}: {} != {w}", reduce(r, &xs));
        }
        let all_nan = [NAN, NAN];
        for r in Reduce::ALL {
            let got = reduce(r, &all_nan);
            match r {
                Reduce::Sum | Reduce::Count => assert_eq!(got, 0.0, "{r:?}"),
                _ => assert!(got.is_nan(), "{r:?}: {got}"),
            }
            let empty = reduce(r, &[]);
            assert!(same(empty, got), "{r:?} of nothing");
        }
        // first and last skip NaN at the ends
        assert_eq!(reduce(Reduce::First, &[NAN, 5.0, 6.0]), 5.0);
        assert_eq!(reduce(Reduce::Last, &[5.0, 6.0, NAN]), 6.0);
        assert_eq!(reduce(Reduce::Median, &[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(reduce(Reduce::Median, &[-1.0, 7.0]), 3.0);
    }

    #[test]
    fn merging_stretches_equals_one_pass() {
        // irregular values, split at every position: merge(left, right) == all at once
        let xs: Vec<f64> = (0..23)
            .map(|i| {
                if i % 7 == 3 {
                    NAN
                } else {
                    ((i * 37) % 11) as f64 * 1.25 - 3.0 + 1e3
                }
            })
            .collect();
        for r in Reduce::ALL {
            let whole = reduce(r, &xs);
            for cut in 0..=xs.len() {
                let mut a = Acc::new(r, 2);
                let mut b = Acc::new(r, 2);
                for x in &xs[..cut] {
                    a.add(1, &[*x]);
                }
                for x in &xs[cut..] {
                    b.add(1, &[*x]);
                }
                a.merge(b);
                let got = a.finish(r, false);
                assert!(same(got[1], whole), "{r:?} cut {cut}: {} != {whole}", got[1]);
                // the other slot saw nothing
                assert!(same(got[0], reduce(r, &[])), "{r:?}");
            }
        }
    }

    #[test]
    fn runs_fill_consecutive_slots() {
        let mut a = Acc::new(Reduce::Max, 4);
        a.add(1, &[1.0, NAN, 3.0]);
        a.add(1, &[0.0, 2.0, 5.0]);
        let got = a.finish(Reduce::Max, false);
        assert!(got[0].is_nan());
        assert_eq!(&got[1..], &[1.0, 2.0, 5.0]);
    }

    /// numpy float32: `np.std(np.float32([250, 9.97e36]))` is inf (the squares overflow),
    /// `np.mean(np.float32([3e38, 3e38]))` is inf (the sum does); float64 keeps both finite.
    #[test]
    fn float32_results_overflow_as_numpy_does() {
        let fin = |r: Reduce, xs: &[f64], f32: bool| {
            let mut a = Acc::new(r, 1);
            for x in xs {
                a.add(0, &[*x]);
            }
            a.finish(r, f32)[0]
        };
        let fill = [250.0, 9.969_209_968_386_869e36];
        for r in [Reduce::Std, Reduce::Var] {
            assert_eq!(fin(r, &fill, true), f64::INFINITY, "{r:?}");
            assert!(fin(r, &fill, false).is_finite(), "{r:?}");
            assert!(fin(r, &[250.0, 251.0], true).is_finite(), "{r:?}");
        }
        assert_eq!(fin(Reduce::Mean, &[3e38, 3e38], true), f64::INFINITY);
        assert_eq!(fin(Reduce::Mean, &[-3e38, -3e38], true), f64::NEG_INFINITY);
        assert_eq!(fin(Reduce::Mean, &[3e38, 3e38], false), 3e38);
        assert_eq!(fin(Reduce::Mean, &fill, true), (fill[0] + fill[1]) / 2.0);
        assert!(fin(Reduce::Std, &[], true).is_nan());
    }

    fn ints(r: Reduce, xs: &[i128], cut: usize, unsigned: bool) -> Vec<Option<i128>> {
        // two stretches merged, slot 0 never fed
        let mut a = Acc::new_int(r, 2);
        let mut b = Acc::new_int(r, 2);
        for x in &xs[..cut] {
            a.add_int(1, &[*x]);
        }
        for x in &xs[cut..] {
            b.add_int(1, &[*x]);
        }
        a.merge(b);
        a.finish_ints(unsigned).expect("integer accumulator")
    }

    /// numpy: `np.int64([2**62]*3 + [1]).sum() == -4611686018427387903` (wraps),
    /// `np.uint64([2**63, 2**63, 5]).sum() == 5`, and int64 sums above 2^53 are exact.
    #[test]
    fn integer_sums_are_exact_and_wrap_as_numpy() {
        let p62 = 1i128 << 62;
        let p63 = 1i128 << 63;
        let big = (1i128 << 53) + 1;
        for cut in 0..=4 {
            assert_eq!(
                ints(Reduce::Sum, &[p62, p62, p62, 1], cut, false)[1],
                Some(-4_611_686_018_427_387_903)
            );
            assert_eq!(
                ints(Reduce::Sum, &[big, big, 1, -1], cut, false)[1],
                Some(2 * big)
            );
        }
        for cut in 0..=3 {
            assert_eq!(ints(Reduce::Sum, &[p63, p63, 5], cut, true)[1], Some(5));
            assert_eq!(ints(Reduce::Sum, &[u64::MAX.into(), 1, 0], cut, true)[1], Some(0));
        }
        // an untouched slot sums to 0 (an empty group is the caller's business)
        assert_eq!(ints(Reduce::Sum, &[1], 0, false)[0], Some(0));
        // float64 would have rounded: 2^53 + 1 is not a float64
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let via_f64 = ((big as f64) * 2.0) as i128;
        assert_ne!(via_f64, 2 * big);
    }

    #[test]
    fn integer_picks_are_exact_in_axis_order() {
        let xs: Vec<i128> = vec![
            i128::from(i64::MAX),
            -7,
            i128::from(i64::MIN),
            3,
            i128::from(i64::MAX) - 1,
        ];
        for cut in 0..=xs.len() {
            let got = |r| ints(r, &xs, cut, false);
            assert_eq!(got(Reduce::Min)[1], Some(i128::from(i64::MIN)), "cut {cut}");
            assert_eq!(got(Reduce::Max)[1], Some(i128::from(i64::MAX)), "cut {cut}");
            assert_eq!(got(Reduce::First)[1], Some(i128::from(i64::MAX)), "cut {cut}");
            assert_eq!(got(Reduce::Last)[1], Some(i128::from(i64::MAX) - 1), "cut {cut}");
            assert_eq!(got(Reduce::Min)[0], None, "nothing seen");
        }
        // reductions with float results of integers go through float64
        let mut a = Acc::new_int(Reduce::Mean, 1);
        for x in [1, 2, 4] {
            a.add_int(0, &[x]);
        }
        assert!(a.clone().finish_ints(false).is_err());
        assert_eq!(a.finish(Reduce::Mean, false), vec![7.0 / 3.0]);
        let mut c = Acc::new_int(Reduce::Count, 1);
        for x in [0, -1, 5] {
            c.add_int(0, &[x]);
        }
        assert_eq!(c.finish(Reduce::Count, false), vec![3.0]);
    }

    /// A block of `outer` 2 × `k` 4 groups × `inner` 2 cells; `groups` of it filled with
    /// `x` + slot, as a partial.
    fn part(r: Reduce, groups: &[u32], x: f64) -> Partial {
        let mut acc = Acc::new(r, 2 * groups.len() * 2);
        let vals: Vec<f64> = (0..2 * groups.len() * 2).map(|i| x + i as f64).collect();
        acc.add(0, &vals);
        Partial {
            groups: groups.to_vec(),
            acc,
        }
    }

    #[test]
    fn partials_merge_into_the_slots_of_their_groups() {
        let shape = (2, 4, 2);
        for r in Reduce::ALL {
            // a partial of one group, then one across a group boundary (groups 1 and 2)
            let mut block = Acc::new(r, 16);
            part(r, &[1], 10.0)
                .merge_into(&mut block, shape)
                .expect("one group");
            part(r, &[1, 2], 100.0)
                .merge_into(&mut block, shape)
                .expect("two groups");
            // the same through whole-block partials holding empty slots elsewhere
            let mut want = Acc::new(r, 16);
            let whole = |slots: &[(usize, f64)]| {
                let mut a = Acc::new(r, 16);
                for (at, x) in slots {
                    a.add(*at, &[*x]);
                }
                a
            };
            // partial [1]: slot (o, j, i) = x + (o*1 + j)*2 + i lands at (o*4 + 1)*2 + i
            want.merge(whole(&[(2, 10.0), (3, 11.0), (10, 12.0), (11, 13.0)]));
            want.merge(whole(&[
                (2, 100.0),
                (3, 101.0),
                (4, 102.0),
                (5, 103.0),
                (10, 104.0),
                (11, 105.0),
                (12, 106.0),
                (13, 107.0),
            ]));
            assert_eq!(format!("{block:?}"), format!("{want:?}"), "{r:?}");
            // groups 0 and 3 were never touched
            let got = block.finish(r, false);
            let empty = Acc::new(r, 1).finish(r, false)[0];
            for slot in [0, 1, 6, 7, 8, 9, 14, 15] {
                assert_eq!(got[slot].to_bits(), empty.to_bits(), "{r:?} slot {slot}");
            }
        }
        // integers too
        let mut block = Acc::new_int(Reduce::Sum, 4);
        let mut p = Partial {
            groups: vec![0, 3],
            acc: Acc::new_int(Reduce::Sum, 2),
        };
        p.acc.add_int(0, &[i128::from(i64::MAX), 5]);
        p.merge_into(&mut block, (1, 4, 1)).expect("ints");
        assert_eq!(block, Acc::IntSum(vec![i128::from(i64::MAX), 0, 0, 5]));
    }

    #[test]
    fn partials_that_do_not_fit_leave_the_block_untouched() {
        let shape = (2, 4, 2);
        let mut block = Acc::new(Reduce::Mean, 16);
        part(Reduce::Mean, &[0], 1.0)
            .merge_into(&mut block, shape)
            .expect("fits");
        let before = block.clone();
        let bad = [
            (part(Reduce::Mean, &[2, 1], 1.0), "not ascending"),
            (part(Reduce::Mean, &[1, 1], 1.0), "twice"),
            (part(Reduce::Mean, &[4], 1.0), "beyond the block"),
            (part(Reduce::Count, &[1], 1.0), "another reduction"),
            (part(Reduce::Mean, &[1], 1.0), "too many slots"),
            (
                Partial {
                    groups: vec![1],
                    acc: Acc::Sum {
                        n: vec![0; 4],
                        sum: vec![0.0; 3],
                    },
                },
                "ragged",
            ),
        ];
        for (i, (mut p, what)) in bad.into_iter().enumerate() {
            if what == "too many slots" {
                p.groups = vec![1];
                p.acc = Acc::new(Reduce::Mean, 5);
            }
            let e = p.merge_into(&mut block, shape).expect_err(what);
            assert_eq!(block, before, "{what}");
            let want_kind = match i {
                0..=2 => matches!(e, MergeError::Groups { .. }),
                3 => e == MergeError::Kind,
                _ => matches!(e, MergeError::Size { .. }),
            };
            assert!(want_kind, "{what}: {e}");
        }
        let mut a = Acc::new(Reduce::Min, 2);
        assert_eq!(
            a.merge_range(0, &mut Acc::new(Reduce::Max, 2), 0, 2),
            Err(MergeError::Kind),
            "picks of another reduction"
        );
        assert_eq!(
            a.merge_range(0, &mut Acc::new(Reduce::Min, 2), 1, 2),
            Err(MergeError::OutOfRange {
                at: 1,
                len: 2,
                slots: 2
            })
        );
        assert_eq!(
            a.merge_range(usize::MAX, &mut Acc::new(Reduce::Min, 2), 0, 2),
            Err(MergeError::OutOfRange {
                at: usize::MAX,
                len: 2,
                slots: 2
            })
        );
    }

    #[test]
    fn reset_to_resizes_to_an_empty_accumulator() {
        for r in Reduce::ALL {
            let mut a = Acc::new(r, 3);
            a.add(0, &[1.0f64, 2.0, 3.0]);
            a.reset_to(5);
            assert_eq!(format!("{a:?}"), format!("{:?}", Acc::new(r, 5)), "{r:?}");
            a.add(0, &[1.0f64; 5]);
            a.reset_to(1);
            assert_eq!(format!("{a:?}"), format!("{:?}", Acc::new(r, 1)), "{r:?}");
        }
        let mut a = Acc::new_int(Reduce::Max, 2);
        a.add_int(0, &[3, 4]);
        a.reset_to(3);
        assert_eq!(a, Acc::new_int(Reduce::Max, 3));
    }
}
