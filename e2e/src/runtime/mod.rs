//! Local pod runtime: Deployment pods as local processes.
pub mod plan;
