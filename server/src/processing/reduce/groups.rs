//! Which output group each position along the reduced axis belongs to (pure functions).
//!
//! - `groupby` of a time component (`time.month`, `.season`, `.year`, `.dayofyear`, `.hour`):
//!   the groups are the component's distinct values, sorted, as xarray's `groupby` labels
//!   them: month 1–12, seasons as the strings `DJF`, `JJA`, `MAM`, `SON` (sorted as strings,
//!   which is xarray's order), day of year in the dataset's calendar (1–360 in `360_day`).
//! - `groupby` of a 1-D coordinate: its distinct non-NaN values, sorted.
//! - `resample`: every period from the first position's to the last one's (empty periods
//!   included, as xarray's `resample` has them), labelled with the period's start; seasons
//!   are quarters starting in December (pandas `QS-DEC`: December belongs to the following
//!   year's DJF, labelled with its 1 December).

use cloudify_crds::Frequency;

use crate::dataset::cftime::{self, Calendar, CfDate};

/// A component of a date that `groupby` can group by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// Month, 1–12.
    Month,
    /// Meteorological season: DJF, MAM, JJA, SON.
    Season,
    /// The year.
    Year,
    /// Day of the year in the dataset's calendar, from 1.
    DayOfYear,
    /// Hour of the day, 0–23.
    Hour,
}

impl Component {
    /// The component of that name (xarray's accessor names).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "month" => Component::Month,
            "season" => Component::Season,
            "year" => Component::Year,
            "dayofyear" => Component::DayOfYear,
            "hour" => Component::Hour,
            _ => return None,
        })
    }

    /// The name of the component (the result's dimension).
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Month => "month",
            Component::Season => "season",
            Component::Year => "year",
            Component::DayOfYear => "dayofyear",
            Component::Hour => "hour",
        }
    }
}

/// Season names in xarray's group order (sorted strings); a season's key is its index here.
pub const SEASONS: [&str; 4] = ["DJF", "JJA", "MAM", "SON"];

/// The season key (index into [`SEASONS`]) of a month.
pub fn season_of(month: u32) -> i64 {
    match month {
        12 | 1 | 2 => 0,
        6..=8 => 1,
        3..=5 => 2,
        _ => 3,
    }
}

/// The value of a date's component (seasons as their [`SEASONS`] index).
pub fn component(c: Component, cal: Calendar, d: &CfDate) -> i64 {
    match c {
        Component::Month => i64::from(d.month),
        Component::Season => season_of(d.month),
        Component::Year => d.year,
        Component::DayOfYear => {
            cftime::day_number(cal, d.year, d.month, d.day) - cftime::day_number(cal, d.year, 1, 1) + 1
        }
        Component::Hour => i64::from(d.hour),
    }
}

/// The number of the period a date falls in: consecutive periods have consecutive numbers.
pub fn period(f: Frequency, cal: Calendar, d: &CfDate) -> i64 {
    match f {
        Frequency::Hour => cftime::day_number(cal, d.year, d.month, d.day) * 24 + i64::from(d.hour),
        Frequency::Day => cftime::day_number(cal, d.year, d.month, d.day),
        Frequency::Month => d.year * 12 + i64::from(d.month) - 1,
        Frequency::Season => {
            // December opens the next year's DJF
            let year = if d.month == 12 { d.year + 1 } else { d.year };
            year * 4 + i64::from(d.month % 12 / 3)
        }
        Frequency::Year => d.year,
    }
}

/// The first instant of period `p` (the label xarray gives it).
pub fn period_start(f: Frequency, cal: Calendar, p: i64) -> CfDate {
    let date = |year: i64, month: u32, day: u32, hour: u32| CfDate {
        year,
        month,
        day,
        hour,
        minute: 0,
        second: 0,
        micros: 0,
    };
    match f {
        Frequency::Hour => {
            let (y, m, d) = cftime::from_day_number(cal, p.div_euclid(24));
            date(y, m, d, p.rem_euclid(24) as u32)
        }
        Frequency::Day => {
            let (y, m, d) = cftime::from_day_number(cal, p);
            date(y, m, d, 0)
        }
        Frequency::Month => date(p.div_euclid(12), p.rem_euclid(12) as u32 + 1, 1, 0),
        Frequency::Season => {
            let (year, q) = (p.div_euclid(4), p.rem_euclid(4));
            match q {
                0 => date(year - 1, 12, 1, 0),
                q => date(year, 3 * q as u32, 1, 0),
            }
        }
        Frequency::Year => date(p, 1, 1, 0),
    }
}

/// Positions along the reduced axis mapped to groups.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// The group of each position; [`NONE`] for a position in no group (a NaN key).
    pub group: Vec<u32>,
    /// The number of groups.
    pub n_groups: usize,
}

/// The group of a position that belongs to none.
pub const NONE: u32 = u32::MAX;

impl Assignment {
    /// Groups by distinct keys, sorted: returns the assignment and the sorted keys.
    pub fn by_keys(keys: &[i64]) -> (Self, Vec<i64>) {
        let mut uniq = keys.to_vec();
        uniq.sort_unstable();
        uniq.dedup();
        let group = keys
            .iter()
            .map(|k| uniq.binary_search(k).map_or(NONE, |i| i as u32))
            .collect();
        (
            Assignment {
                group,
                n_groups: uniq.len(),
            },
            uniq,
        )
    }

    /// Every position its own group, in stored order: how xarray groups by a dimension
    /// coordinate whose values are unique and monotonic (increasing or decreasing; its
    /// `UniqueGrouper` then does not sort them, so a latitude stored north to south stays
    /// so). The assignment and each group's position.
    pub fn each(n: usize) -> (Self, Vec<usize>) {
        (
            Assignment {
                group: (0..n as u32).collect(),
                n_groups: n,
            },
            (0..n).collect(),
        )
    }

    /// Groups by distinct non-NaN float values, sorted: the assignment and, for each group,
    /// the first position holding its value.
    pub fn by_values(values: &[f64]) -> (Self, Vec<usize>) {
        let mut order: Vec<usize> = (0..values.len()).filter(|i| !values[*i].is_nan()).collect();
        order.sort_by(|a, b| values[*a].total_cmp(&values[*b]).then(a.cmp(b)));
        let mut group = vec![NONE; values.len()];
        let mut firsts: Vec<usize> = Vec::new();
        for i in order {
            // -0.0 and 0.0 are one group, as numpy's unique has them
            if firsts.last().is_none_or(|f| values[*f] != values[i]) {
                firsts.push(i);
            }
            group[i] = (firsts.len() - 1) as u32;
        }
        (
            Assignment {
                group,
                n_groups: firsts.len(),
            },
            firsts,
        )
    }

    /// Resampling: every period from the first position's to the last's. Returns the
    /// assignment and the number of the first period (`None` without positions).
    pub fn by_periods(periods: &[i64]) -> (Self, Option<i64>) {
        let (Some(lo), Some(hi)) = (periods.iter().min(), periods.iter().max()) else {
            return (
                Assignment {
                    group: Vec::new(),
                    n_groups: 0,
                },
                None,
            );
        };
        let group = periods.iter().map(|p| (p - lo) as u32).collect();
        (
            Assignment {
                group,
                n_groups: (hi - lo + 1) as usize,
            },
            Some(*lo),
        )
    }

    /// The range of positions `[first, last + 1)` holding any of the groups `[g0, g1)`
    /// (`None` when no position does).
    pub fn rows_of(&self, g0: usize, g1: usize) -> Option<(usize, usize)> {
        let inside = |g: &u32| *g != NONE && (g0..g1).contains(&(*g as usize));
        let first = self.group.iter().position(inside)?;
        let last = self.group.iter().rposition(inside)?;
        Some((first, last + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(year: i64, month: u32, day: u32, hour: u32) -> CfDate {
        CfDate {
            year,
            month,
            day,
            hour,
            minute: 0,
            second: 0,
            micros: 0,
        }
    }

    #[test]
    fn seasons_in_xarray_order_with_december_in_djf() {
        let names: Vec<&str> = (1..=12).map(|m| SEASONS[season_of(m) as usize]).collect();
        assert_eq!(
            names,
            [
                "DJF", "DJF", "MAM", "MAM", "MAM", "JJA", "JJA", "JJA", "SON", "SON", "SON", "DJF"
            ]
        );
        let mut sorted = SEASONS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, SEASONS, "xarray sorts the season strings");
    }

    #[test]
    fn resample_seasons_put_december_in_the_next_djf() {
        let cal = Calendar::NoLeap;
        let dec = period(Frequency::Season, cal, &d(2000, 12, 15, 0));
        let jan = period(Frequency::Season, cal, &d(2001, 1, 15, 0));
        let feb = period(Frequency::Season, cal, &d(2001, 2, 28, 0));
        let mar = period(Frequency::Season, cal, &d(2001, 3, 1, 0));
        let nov = period(Frequency::Season, cal, &d(2000, 11, 30, 23));
        assert_eq!(dec, jan);
        assert_eq!(jan, feb);
        assert_eq!(mar, jan + 1);
        assert_eq!(nov + 1, dec);
        assert_eq!(period_start(Frequency::Season, cal, dec), d(2000, 12, 1, 0));
        assert_eq!(period_start(Frequency::Season, cal, mar), d(2001, 3, 1, 0));
        assert_eq!(period_start(Frequency::Season, cal, nov), d(2000, 9, 1, 0));
    }

    #[test]
    fn periods_round_trip_in_every_calendar() {
        let cals = [
            Calendar::Standard,
            Calendar::ProlepticGregorian,
            Calendar::Julian,
            Calendar::NoLeap,
            Calendar::AllLeap,
            Calendar::Day360,
        ];
        for cal in cals {
            for f in [
                Frequency::Hour,
                Frequency::Day,
                Frequency::Month,
                Frequency::Season,
                Frequency::Year,
            ] {
                // a date is in the period that starts at or before it, and the next
                // period starts after it
                for date in [
                    d(1999, 12, 31, 23),
                    d(2000, 1, 1, 0),
                    d(2000, 2, 28, 12),
                    d(2000, 3, 1, 5),
                    d(2001, 6, 30, 7),
                    d(1850, 12, 1, 0),
                ] {
                    if cal == Calendar::Day360 && date.day > 30 {
                        continue; // 31 December does not exist in 360_day
                    }
                    let p = period(f, cal, &date);
                    let start = period_start(f, cal, p);
                    assert!(start <= date, "{cal:?} {f:?} {date}: start {start}");
                    assert_eq!(period(f, cal, &start), p, "{cal:?} {f:?} {start}");
                    assert!(period_start(f, cal, p + 1) > date, "{cal:?} {f:?} {date}");
                }
            }
        }
        // consecutive days of 360_day: 30 February exists and 1 March follows it
        let feb30 = period(Frequency::Day, Calendar::Day360, &d(2000, 2, 30, 0));
        assert_eq!(
            period_start(Frequency::Day, Calendar::Day360, feb30 + 1),
            d(2000, 3, 1, 0)
        );
        // noleap: 28 February is followed by 1 March, also in 2000
        let feb28 = period(Frequency::Day, Calendar::NoLeap, &d(2000, 2, 28, 0));
        assert_eq!(
            period_start(Frequency::Day, Calendar::NoLeap, feb28 + 1),
            d(2000, 3, 1, 0)
        );
    }

    #[test]
    fn day_of_year_per_calendar() {
        let doy = |cal, date| component(Component::DayOfYear, cal, &date);
        assert_eq!(doy(Calendar::NoLeap, d(2000, 12, 31, 0)), 365);
        assert_eq!(doy(Calendar::AllLeap, d(2001, 12, 31, 0)), 366);
        assert_eq!(doy(Calendar::Day360, d(2001, 12, 30, 0)), 360);
        assert_eq!(doy(Calendar::Standard, d(2000, 3, 1, 0)), 61);
        assert_eq!(doy(Calendar::Standard, d(2001, 3, 1, 0)), 60);
        assert_eq!(doy(Calendar::Julian, d(1900, 3, 1, 0)), 61);
        assert_eq!(doy(Calendar::ProlepticGregorian, d(1900, 3, 1, 0)), 60);
    }

    #[test]
    fn assignments() {
        let (a, keys) = Assignment::by_keys(&[3, 1, 3, 2, 1]);
        assert_eq!(keys, [1, 2, 3]);
        assert_eq!(a.group, [2, 0, 2, 1, 0]);
        assert_eq!(a.rows_of(1, 2), Some((3, 4)));
        assert_eq!(a.rows_of(2, 3), Some((0, 3)));
        let (a, firsts) = Assignment::by_values(&[2.5, f64::NAN, -1.0, 2.5, 0.0, -0.0]);
        assert_eq!(a.n_groups, 3);
        assert_eq!(a.group, [2, NONE, 0, 2, 1, 1]);
        assert_eq!(firsts, [2, 5, 0]);
        let (a, lo) = Assignment::by_periods(&[10, 10, 12, 13]);
        assert_eq!(lo, Some(10));
        assert_eq!(a.n_groups, 4, "the empty period 11 is a group");
        assert_eq!(a.group, [0, 0, 2, 3]);
        assert_eq!(a.rows_of(1, 2), None);
    }
}
