//! The cloudify Kubernetes operator: `CloudifyDataset` custom resources → autoscaled cloudify
//! server pods behind an ingress.
//!
//! This crate is laid out along the reconcile pipeline (validate → build → apply → status) so
//! that every step that needs no cluster is a pure function: [`validate`] checks what the CRD
//! schema cannot, [`build`] computes the desired objects, and [`render`] prints them for
//! GitOps review. The apply and status steps (which talk to the API server) come later and
//! use the same functions, so what `render` shows is what the operator applies.
#![forbid(unsafe_code)]

pub mod build;
pub mod crd;
pub mod render;
pub mod validate;
pub mod yaml;

/// Field manager for server-side apply, and the value of `app.kubernetes.io/managed-by`.
pub const MANAGER: &str = "cloudify-operator";
