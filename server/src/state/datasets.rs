//! The configured datasets and the state each is in: opening, ready or failed.
//!
//! The list of datasets is fixed at start-up (configuration order, each dataset followed by
//! its views), but a dataset's state is not: the server listens before every dataset has
//! opened (one whose files must first be recalled from tape may take hours), so an entry
//! starts as [`Entry::Opening`] and is swapped, once, for [`Entry::Ready`] or
//! [`Entry::Failed`] by whoever opens it. Handlers take a snapshot of an entry per request
//! (a cheap clone of an `Arc` under a read lock), so a request sees one state throughout.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use prometheus::IntGaugeVec;

use super::Served;

/// Longest `Retry-After` an opening answers. Archives estimate queued recalls in days at
/// times; a client told to wait that long would not come back when the recall is early, and
/// asking once an hour costs nothing.
pub const MAX_RETRY_AFTER: u64 = 3600;

pub use crate::open::tape::Estimate;

/// A dataset still being opened. Requests for it are answered 503 with `Retry-After`, never
/// 404: a Zarr client reads a 404 as "chunk not written", that is fill values.
#[derive(Debug, Clone)]
pub struct Opening {
    /// When its opening started.
    pub since: Instant,
    /// What the opening waits for, in words (`/status`, error bodies).
    pub waiting_for: String,
    /// Seconds a client should wait before asking again (`Retry-After`) when there is no
    /// estimate: the configured guess.
    pub retry_after: u64,
    /// Where the current estimate comes from (a recall from tape), if anywhere.
    pub estimate: Option<Arc<dyn Estimate>>,
}

impl Opening {
    /// Whole seconds since the opening started.
    pub fn seconds(&self) -> u64 {
        self.since.elapsed().as_secs()
    }

    /// `Retry-After` now: the estimate's seconds left, if it has any, within
    /// 1..=[`MAX_RETRY_AFTER`] (an estimate of 0 is "any moment", and asking again at once
    /// would only spin); else the configured [`Opening::retry_after`].
    pub fn retry_after_now(&self) -> u64 {
        self.estimate
            .as_ref()
            .and_then(|e| e.seconds_left())
            .map_or(self.retry_after, |s| s.clamp(1, MAX_RETRY_AFTER))
    }
}

/// State of one configured dataset.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Being opened in the background: listed, but answered 503 + `Retry-After`.
    Opening(Opening),
    /// Opened and served.
    Ready(Arc<Served>),
    /// Could not be opened: the reason, shown by `/status` and `/readyz` and answered to requests
    /// for it.
    Failed(String),
}

impl Entry {
    /// The state's name as `/status`, error bodies and the `cloudify_datasets` gauge spell it.
    pub fn state(&self) -> &'static str {
        match self {
            Entry::Opening(_) => "opening",
            Entry::Ready(_) => "ready",
            Entry::Failed(_) => "failed",
        }
    }

    /// True once the dataset is ready or failed: its state will not change any more.
    pub fn is_settled(&self) -> bool {
        !matches!(self, Entry::Opening(_))
    }
}

/// A state change the table refuses; each is a bug in whoever opens datasets.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    /// The id names no configured dataset.
    #[error("no dataset '{0}' is configured")]
    Unknown(String),
    /// Ready and failed are final: a dataset is opened once per process.
    #[error("dataset '{id}' is {state} already; only an opening dataset becomes ready or failed")]
    Settled {
        /// The dataset.
        id: String,
        /// Its state, which stays.
        state: &'static str,
    },
    /// An opening dataset can only become ready or failed.
    #[error("dataset '{0}': an opening dataset can only become ready or failed")]
    StillOpening(String),
}

/// How many datasets are in each state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Still opening.
    pub opening: usize,
    /// Served.
    pub ready: usize,
    /// Failed to open.
    pub failed: usize,
}

/// Every configured dataset with its state, shared by the handlers and by the threads that
/// open datasets in the background.
#[derive(Debug)]
pub struct Datasets {
    /// In configuration order, views after their dataset; ids are unique (validated config).
    slots: Vec<(String, RwLock<Entry>)>,
    /// Id → position in `slots`: every request looks its dataset up, among up to thousands.
    index: HashMap<String, usize>,
    /// Bumped on every state change, so that [`Datasets::wait_until`] can sleep on `changed`
    /// without missing one.
    generation: Mutex<u64>,
    changed: Condvar,
    /// `cloudify_datasets{state}`, kept equal to [`Datasets::counts`].
    gauge: Option<IntGaugeVec>,
}

impl Datasets {
    /// The datasets `entries`, in that order.
    pub fn new(entries: Vec<(String, Entry)>) -> Self {
        let mut index = HashMap::with_capacity(entries.len());
        for (i, (id, _)) in entries.iter().enumerate() {
            // the first of a repeated id wins, as a search in order would find it
            index.entry(id.clone()).or_insert(i);
        }
        Self {
            slots: entries.into_iter().map(|(id, e)| (id, RwLock::new(e))).collect(),
            index,
            generation: Mutex::new(0),
            changed: Condvar::new(),
            gauge: None,
        }
    }

    /// The same table, keeping `gauge` (labelled by state) equal to its counts.
    #[must_use]
    pub fn with_gauge(mut self, gauge: IntGaugeVec) -> Self {
        self.gauge = Some(gauge);
        self.publish();
        self
    }

    /// A snapshot of the state of dataset `id`; `None` if no dataset of that id is configured.
    pub fn get(&self, id: &str) -> Option<Entry> {
        self.slot(id).map(read)
    }

    fn slot(&self, id: &str) -> Option<&RwLock<Entry>> {
        self.index
            .get(id)
            .and_then(|&i| self.slots.get(i))
            .map(|(_, e)| e)
    }

    /// Every dataset's id and a snapshot of its state, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Entry)> + '_ {
        self.slots.iter().map(|(n, e)| (n.as_str(), read(e)))
    }

    /// Number of configured datasets (views included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no dataset is configured.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// How many datasets are in each state now.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for (_, e) in &self.slots {
            match *e.read().unwrap_or_else(PoisonError::into_inner) {
                Entry::Opening(_) => c.opening += 1,
                Entry::Ready(_) => c.ready += 1,
                Entry::Failed(_) => c.failed += 1,
            }
        }
        c
    }

    /// True when a dataset whose id satisfies `which` is still opening. Looks at states
    /// without copying them: start-up asks it after every dataset that opens, of thousands.
    pub fn any_opening(&self, which: impl Fn(&str) -> bool) -> bool {
        self.slots
            .iter()
            .any(|(n, e)| !e.read().unwrap_or_else(PoisonError::into_inner).is_settled() && which(n))
    }

    /// Ends the opening of dataset `id` with `entry` (ready or failed), waking every
    /// [`Datasets::wait_until`]. Refused for an unknown id, a dataset that is not opening,
    /// and an `entry` that is still opening: each state change happens once.
    pub fn settle(&self, id: &str, entry: Entry) -> Result<(), TransitionError> {
        let Some(slot) = self.slot(id) else {
            return Err(TransitionError::Unknown(id.to_string()));
        };
        if !entry.is_settled() {
            return Err(TransitionError::StillOpening(id.to_string()));
        }
        {
            let mut cur = slot.write().unwrap_or_else(PoisonError::into_inner);
            if cur.is_settled() {
                return Err(TransitionError::Settled {
                    id: id.to_string(),
                    state: cur.state(),
                });
            }
            *cur = entry;
        }
        self.publish();
        let mut g = self.generation.lock().unwrap_or_else(PoisonError::into_inner);
        *g += 1;
        self.changed.notify_all();
        Ok(())
    }

    /// Blocks until `done(self)` holds (true) or `deadline` passes (false; `None`: no
    /// deadline). `done` is checked again after every state change.
    pub fn wait_until(&self, deadline: Option<Instant>, done: impl Fn(&Self) -> bool) -> bool {
        let mut g = self.generation.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            // checked while holding the lock that `settle` takes after its change, so that a
            // change after this check wakes the wait below
            if done(self) {
                return true;
            }
            g = match deadline {
                None => self.changed.wait(g).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left == Duration::ZERO {
                        return false;
                    }
                    self.changed
                        .wait_timeout(g, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    fn publish(&self) {
        if let Some(g) = &self.gauge {
            let c = self.counts();
            for (state, n) in [("opening", c.opening), ("ready", c.ready), ("failed", c.failed)] {
                g.with_label_values(&[state]).set(n as i64);
            }
        }
    }
}

/// A snapshot of `slot`. A writer that panicked mid-swap cannot leave a half-written entry
/// (the assignment is one move), so a poisoned lock still holds a whole one.
fn read(slot: &RwLock<Entry>) -> Entry {
    slot.read().unwrap_or_else(PoisonError::into_inner).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn opening() -> Entry {
        Entry::Opening(Opening {
            since: Instant::now(),
            waiting_for: "a test".into(),
            retry_after: 7,
            estimate: None,
        })
    }

    fn gauge() -> IntGaugeVec {
        IntGaugeVec::new(prometheus::Opts::new("t_datasets", "t"), &["state"]).expect("gauge")
    }

    #[test]
    fn opening_becomes_failed_once_and_the_gauge_follows() {
        let g = gauge();
        let t = Datasets::new(vec![("a".into(), opening()), ("b".into(), opening())]).with_gauge(g.clone());
        assert_eq!(
            t.counts(),
            Counts {
                opening: 2,
                ready: 0,
                failed: 0
            }
        );
        assert_eq!(g.with_label_values(&["opening"]).get(), 2);
        t.settle("a", Entry::Failed("gone".into())).expect("settle");
        assert!(matches!(t.get("a"), Some(Entry::Failed(w)) if w == "gone"));
        assert_eq!(
            t.counts(),
            Counts {
                opening: 1,
                ready: 0,
                failed: 1
            }
        );
        assert_eq!(g.with_label_values(&["opening"]).get(), 1);
        assert_eq!(g.with_label_values(&["failed"]).get(), 1);
        // final: neither failed again nor anything else
        assert_eq!(
            t.settle("a", Entry::Failed("again".into())),
            Err(TransitionError::Settled {
                id: "a".into(),
                state: "failed"
            })
        );
        assert!(matches!(t.get("a"), Some(Entry::Failed(w)) if w == "gone"));
        assert!(t.any_opening(|id| id == "b") && !t.any_opening(|id| id == "a"));
        // an opening dataset does not go back to opening, unknown ids are refused
        assert_eq!(
            t.settle("b", opening()),
            Err(TransitionError::StillOpening("b".into()))
        );
        assert_eq!(
            t.settle("zz", Entry::Failed("x".into())),
            Err(TransitionError::Unknown("zz".into()))
        );
        assert_eq!(t.get("zz").map(|e| e.state()), None);
        assert_eq!(
            t.iter().map(|(n, e)| (n, e.state())).collect::<Vec<_>>(),
            [("a", "failed"), ("b", "opening")]
        );
    }

    /// A dataset with no variables: enough to be served (metadata of an empty group).
    fn served() -> Arc<Served> {
        let ds = crate::dataset::Dataset {
            name: "a".into(),
            spec: cloudify_crds::DatasetSpec::new("a", vec![]),
            root: crate::dataset::Group::default(),
            files: Vec::new(),
            fingerprint: 1,
            skipped: Vec::new(),
            by_path: std::collections::HashMap::new(),
            remote: false,
        };
        let meta = crate::zarr::render(&ds);
        let refs = crate::kerchunk::build(&ds);
        Arc::new(Served::new(ds, meta, refs, None))
    }

    #[test]
    fn opening_becomes_ready_and_stays_ready() {
        let t = Datasets::new(vec![("a".into(), opening())]);
        let before = t.get("a");
        let s = served();
        t.settle("a", Entry::Ready(s.clone())).expect("settle");
        // a snapshot taken before keeps its state: a request sees one state throughout
        assert!(matches!(before, Some(Entry::Opening(o)) if o.retry_after == 7 && o.waiting_for == "a test"));
        assert!(matches!(t.get("a"), Some(Entry::Ready(r)) if Arc::ptr_eq(&r, &s)));
        assert_eq!(
            t.counts(),
            Counts {
                opening: 0,
                ready: 1,
                failed: 0
            }
        );
        assert_eq!(
            t.settle("a", Entry::Failed("late".into())),
            Err(TransitionError::Settled {
                id: "a".into(),
                state: "ready"
            })
        );
        assert!(matches!(t.get("a"), Some(Entry::Ready(_))));
    }

    #[test]
    fn wait_until_wakes_on_a_change_and_honours_its_deadline() {
        let t = Arc::new(Datasets::new(vec![("a".into(), opening())]));
        let settled = |t: &Datasets| t.counts().opening == 0;
        let t0 = Instant::now();
        assert!(!t.wait_until(Some(Instant::now() + Duration::from_millis(50)), settled));
        assert!(t0.elapsed() >= Duration::from_millis(50));
        let t2 = t.clone();
        let opener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            t2.settle("a", Entry::Failed("no".into()))
        });
        assert!(t.wait_until(Some(Instant::now() + Duration::from_secs(30)), settled));
        assert_eq!(opener.join().expect("join"), Ok(()));
        // already true: no wait, with or without a deadline
        assert!(t.wait_until(None, settled));
    }

    #[test]
    fn states_are_named_as_status_spells_them() {
        assert_eq!(opening().state(), "opening");
        assert!(!opening().is_settled());
        assert_eq!(Entry::Failed(String::new()).state(), "failed");
        assert!(Entry::Failed(String::new()).is_settled());
    }
}
