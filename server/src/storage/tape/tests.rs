//! The stager with an in-process driver: single flight, batching, waiting, failures.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::driver::{Driver, JobStatus};
use super::*;

/// Recalls take `delay`; files named `*bad*` fail; tapes are the first path segment.
#[derive(Debug)]
struct Fake {
    delay: Duration,
    submits: Mutex<Vec<Vec<String>>>,
    started: Mutex<HashMap<String, Instant>>,
    retrieves: AtomicUsize,
}

impl Fake {
    fn new(delay_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            delay: Duration::from_millis(delay_ms),
            submits: Mutex::default(),
            started: Mutex::default(),
            retrieves: AtomicUsize::new(0),
        })
    }
}

impl Driver for Fake {
    fn tapes(&self, files: &[String]) -> Result<HashMap<String, String>, String> {
        Ok(files
            .iter()
            .filter_map(|f| {
                Some((
                    f.clone(),
                    f.trim_start_matches('/').split('/').next()?.to_string(),
                ))
            })
            .collect())
    }
    fn submit(&self, files: &[String]) -> Result<String, String> {
        let mut s = self.submits.lock().unwrap();
        s.push(files.to_vec());
        let job = s.len().to_string();
        self.started.lock().unwrap().insert(job.clone(), Instant::now());
        Ok(job)
    }
    fn status(&self, job: &str) -> Result<JobStatus, String> {
        let t0 = self.started.lock().unwrap()[job];
        if t0.elapsed() < self.delay {
            return Ok(JobStatus::Running { eta: Some(7) });
        }
        let files = self.submits.lock().unwrap()[job.parse::<usize>().unwrap() - 1].clone();
        if files.iter().all(|f| f.contains("bad")) {
            return Ok(JobStatus::Failed("tape T9 unavailable".into()));
        }
        Ok(JobStatus::Finished {
            failed: files
                .iter()
                .filter(|f| f.contains("bad"))
                .map(|f| (f.clone(), "tape T9 unavailable".into()))
                .collect(),
        })
    }
    fn retrieve(&self, _job: &str, file: &str, dest: &Path) -> Result<(), String> {
        self.retrieves.fetch_add(1, Ordering::SeqCst);
        std::fs::write(dest, file.as_bytes().repeat(10)).map_err(|e| e.to_string())
    }
}

fn limits(wait_ms: u64) -> Limits {
    Limits {
        wait: Duration::from_millis(wait_ms),
        window: Duration::from_millis(50),
        tapes_per_job: 2,
        parallel_jobs: 2,
        poll: Duration::from_millis(10),
        retry_after: 99,
        backoff: Duration::from_millis(300),
        files_per_job: 100,
        health_every: Duration::from_millis(50),
    }
}

fn stager(fake: &Arc<Fake>, budget: u64, wait_ms: u64) -> (tempfile::TempDir, Arc<Stager>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Arc::new(StagingCache::open(dir.path(), budget).expect("cache"));
    (dir, Arc::new(Stager::new(fake.clone(), cache, limits(wait_ms))))
}

#[test]
fn many_waiters_of_one_file_make_one_recall() {
    let fake = Fake::new(200);
    let (_d, s) = stager(&fake, 1 << 20, 5000);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let pin = s.acquire("/T1/a.nc").expect("staged");
                std::fs::read(&pin.path).expect("read")
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), b"/T1/a.nc".repeat(10));
    }
    assert_eq!(fake.submits.lock().unwrap().len(), 1);
    assert_eq!(fake.retrieves.load(Ordering::SeqCst), 1);
    // staged: no further recall
    s.acquire("/T1/a.nc").expect("online");
    assert_eq!(fake.submits.lock().unwrap().len(), 1);
}

#[test]
fn a_short_wait_is_nearline_with_the_drivers_estimate_then_online() {
    let fake = Fake::new(300);
    let (_d, s) = stager(&fake, 1 << 20, 100);
    // queued while the batch window (50 ms) runs: the configured default
    let e = s
        .acquire_within("/T1/a.nc", Duration::from_millis(10))
        .expect_err("still on tape");
    assert!(
        matches!(e, TapeError::Nearline { state: "queued", .. }) && e.is_unavailable(),
        "{e}"
    );
    assert_eq!(e.retry_after(), 99);
    std::thread::sleep(Duration::from_millis(100));
    let e = s.acquire("/T1/a.nc").expect_err("still on tape");
    let TapeError::Nearline {
        state,
        job,
        retry_after,
        ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(
        (*state, job.as_deref(), *retry_after),
        ("recalling", Some("1"), 7)
    );
    assert_eq!(e.detail()["job"], "1");
    s.acquire_within("/T1/a.nc", Duration::from_secs(5))
        .expect("staged");
    // (the job's thread may still be finishing: its count is not checked)
    let (files, queued, _) = s.locality(&["/T1/a.nc".into(), "/T2/b.nc".into()]);
    assert_eq!(
        (files[0].state, files[1].state, queued),
        ("online", "nearline", 0)
    );
}

#[test]
fn files_on_one_tape_share_a_job_and_jobs_span_at_most_two_tapes() {
    let fake = Fake::new(50);
    let (_d, s) = stager(&fake, 1 << 20, 5000);
    let files: Vec<String> = ["/T1/a", "/T1/b", "/T2/c", "/T3/d", "/T1/e"]
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(s.stage(&files), 5);
    assert_eq!(s.stage(&files), 0, "already queued");
    for f in &files {
        s.acquire(f).expect("staged");
    }
    let mut jobs = fake.submits.lock().unwrap().clone();
    jobs.sort();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(
        jobs.contains(&vec![
            "/T1/a".into(),
            "/T1/b".into(),
            "/T1/e".into(),
            "/T2/c".into()
        ]),
        "{jobs:?}"
    );
}

#[test]
fn failures_are_reported_then_retried_after_a_backoff() {
    let fake = Fake::new(10);
    let (_d, s) = stager(&fake, 1 << 20, 3000);
    let e = s.acquire("/T9/bad.nc").expect_err("fails");
    let TapeError::Failed { reason, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        reason.contains("tape T9 unavailable") && !e.is_unavailable(),
        "{e}"
    );
    // within the backoff: answered at once, no new job
    let e = s.acquire("/T9/bad.nc").expect_err("fails");
    assert!(matches!(e, TapeError::Failed { .. }));
    assert_eq!(fake.submits.lock().unwrap().len(), 1);
    std::thread::sleep(Duration::from_millis(350));
    assert!(s.acquire("/T9/bad.nc").is_err());
    assert_eq!(fake.submits.lock().unwrap().len(), 2, "retried after the backoff");
}

#[test]
fn a_full_cache_of_pinned_files_refuses_instead_of_evicting() {
    let fake = Fake::new(10);
    // each staged file is 10 copies of its 8-byte path: 80 bytes; room for two
    let (_d, s) = stager(&fake, 170, 3000);
    let a = s.acquire("/T1/a.nc").expect("staged");
    let b = s.acquire("/T1/b.nc").expect("staged");
    let e = s.acquire("/T1/c.nc").expect_err("no room");
    assert!(e.is_unavailable(), "{e}");
    assert!(a.path.is_file() && b.path.is_file());
    drop(a);
    std::thread::sleep(Duration::from_millis(350));
    let c = s.acquire("/T1/c.nc").expect("a evicted");
    assert!(!s.cache.contains("/T1/a.nc") && b.path.is_file() && c.path.is_file());
}

/// An archive whose health answer is switched by the test; recalls always fail.
#[derive(Debug, Default)]
struct Probed {
    down: std::sync::atomic::AtomicBool,
    asked: Mutex<Vec<String>>,
}

impl Driver for Probed {
    fn tapes(&self, _files: &[String]) -> Result<HashMap<String, String>, String> {
        Ok(HashMap::new())
    }
    fn submit(&self, _files: &[String]) -> Result<String, String> {
        Err("POST https://tape.example/api/v1/tape/stage: connection refused".into())
    }
    fn status(&self, _job: &str) -> Result<JobStatus, String> {
        Err("no jobs".into())
    }
    fn retrieve(&self, _job: &str, _file: &str, _dest: &Path) -> Result<(), String> {
        Err("no files".into())
    }
    fn probe(&self, sample: &str) -> Option<Result<(), String>> {
        self.asked.lock().unwrap().push(sample.to_string());
        Some(if self.down.load(Ordering::SeqCst) {
            Err("POST https://tape.example/api/v1/tape/archiveinfo: connection refused".into())
        } else {
            Ok(())
        })
    }
}

fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_archive_is_checked_about_the_first_file_named_and_reported_failing_then_ok() {
    let driver = Arc::new(Probed::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Arc::new(StagingCache::open(dir.path(), 1 << 20).expect("cache"));
    let s = Arc::new(Stager::new(driver.clone(), cache, limits(100)));
    // nothing named yet: nothing asked, nothing known
    assert_eq!(s.health(), None);
    s.watch("/T1/a.nc");
    s.watch("/T2/b.nc");
    let ok = until("a first answer", || s.health());
    assert_eq!((ok.state, ok.error.as_deref()), ("ok", None));
    assert!(driver.asked.lock().unwrap().iter().all(|p| p == "/T1/a.nc"));

    driver.down.store(true, Ordering::SeqCst);
    let failing = until("failing", || s.health().filter(|h| h.state == "failing"));
    assert!(
        failing
            .error
            .as_deref()
            .is_some_and(|e| e.contains("archiveinfo: connection refused"))
    );
    // checked again and again, `since` kept from the first failing answer
    std::thread::sleep(Duration::from_millis(1100));
    let later = s.health().expect("known");
    assert_eq!(later.state, "failing");
    assert!(
        later.since_seconds >= 1 && later.checked_seconds_ago == 0,
        "{later:?}"
    );

    driver.down.store(false, Ordering::SeqCst);
    let back = until("ok again", || s.health().filter(|h| h.state == "ok"));
    assert_eq!((back.error, back.since_seconds), (None, 0));
}

#[test]
fn a_failed_recall_checks_the_archive_at_once() {
    let driver = Arc::new(Probed::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Arc::new(StagingCache::open(dir.path(), 1 << 20).expect("cache"));
    let mut l = limits(2000);
    l.health_every = Duration::from_secs(3600);
    let s = Arc::new(Stager::new(driver.clone(), cache, l));
    s.watch("/T1/a.nc");
    until("the first check", || s.health());
    driver.down.store(true, Ordering::SeqCst);
    // the next check would be in an hour; the failed recall asks now
    let e = s.acquire("/T1/a.nc").expect_err("the recall fails");
    assert!(matches!(e, TapeError::Failed { .. }), "{e:?}");
    let h = until("failing after the failed recall", || {
        s.health().filter(|h| h.state == "failing")
    });
    assert!(h.error.is_some());
    assert_eq!(driver.asked.lock().unwrap().len(), 2);
}

#[test]
fn a_driver_without_a_health_question_reports_nothing() {
    let fake = Fake::new(10);
    let (_d, s) = stager(&fake, 1 << 20, 1000);
    s.watch("/T1/a.nc");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.health(), None);
}
