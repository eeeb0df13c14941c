//! Compute pods: processing work sent from `cloudify serve --compute URL[,URL...]` to
//! `cloudify worker` processes (Kubernetes schedules, restarts and autoscales them behind a
//! Service; on-prem they are a list of URLs). No scheduler here: a task goes to the next
//! worker in turn, and to another one when that one dies or times out.
//!
//! - [`protocol`]: the typed request and response, postcard-encoded, version-checked both
//!   ways;
//! - [`client`]: the server's side, a [`crate::processing::exec::Executor`] with bounded
//!   concurrency, per-task timeouts, retries and a queue limit (503 + `Retry-After`);
//! - [`worker`]: the `cloudify worker` service;
//! - [`secret`]: the shared secret that makes workers take tasks from their server only.

pub mod client;
pub mod protocol;
pub mod secret;
pub mod worker;
