//! Work that start-up does not wait for but the process finishes before it exits: index
//! cache entries and Parquet references written after a dataset is ready.
//!
//! Without this, a server stopped (or a `cloudify index` run ending) right after start-up
//! would silently drop cache entries it had already computed.

use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

static PENDING: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// Runs `f` on a named thread of its own, remembered for [`wait`]. Returns false (and logs)
/// when no thread could be started; the work is then not done.
pub fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> bool {
    match std::thread::Builder::new().name(name.to_string()).spawn(f) {
        Ok(h) => {
            let mut pending = PENDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.retain(|h| !h.is_finished());
            pending.push(h);
            true
        }
        Err(e) => {
            tracing::warn!("cannot start background thread {name}: {e}");
            false
        }
    }
}

/// Waits up to `timeout` for all background work; true when everything finished.
pub fn wait(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = {
            let mut pending = PENDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (done, running): (Vec<_>, Vec<_>) =
                pending.drain(..).partition(std::thread::JoinHandle::is_finished);
            for h in done {
                // a panic in the work was already reported by the panic hook
                let _ = h.join();
            }
            *pending = running;
            pending.len()
        };
        if left == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            tracing::warn!(threads = left, "exiting before background cache writes finished");
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_joins_spawned_work() {
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(spawn("t", move || {
            std::thread::sleep(Duration::from_millis(50));
            let _ = tx.send(1);
        }));
        assert!(wait(Duration::from_secs(10)));
        assert_eq!(rx.try_recv().ok(), Some(1));
        assert!(
            !spawn("t2", || std::thread::sleep(Duration::from_secs(2))) || !wait(Duration::from_millis(10))
        );
    }
}
