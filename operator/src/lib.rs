//! The cloudify Kubernetes operator: `CloudifyDataset` custom resources → autoscaled cloudify
//! server pods behind an ingress.
//!
//! This crate is laid out along the reconcile pipeline (validate → build → apply → status) so
//! that every step that needs no cluster is a pure function: [`validate`] checks what the CRD
//! schema cannot, [`build`] computes the desired objects, and [`render`] prints them for
//! GitOps review. The [`controller`] applies exactly those objects (server-side apply), prunes
//! what is no longer wanted, writes the status and registers the dataset in the STAC catalog;
//! [`run`] is the `cloudify-operator run` process around it (watches, leader election,
//! probes and metrics). What `render` shows is what the operator applies.
#![forbid(unsafe_code)]

pub mod build;
pub mod controller;
pub mod crd;
pub mod layout;
pub mod metrics;
pub mod probes;
pub mod rbac;
pub mod render;
pub mod run;
pub mod validate;
pub mod yaml;

/// Field manager for server-side apply, and the value of `app.kubernetes.io/managed-by`.
pub const MANAGER: &str = "cloudify-operator";
