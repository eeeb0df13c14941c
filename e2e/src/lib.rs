//! cloudify's end-to-end test platform, used only by tests and by people trying the platform by
//! hand (`cloudify-e2e up`). These machines have no container engine and no kube-apiserver, so
//! the platform brings its own test doubles of the real components:
//!
//! - [`apiserver`]: a Kubernetes API emulator speaking the real wire protocol, so unmodified
//!   `kubectl` and kube-rs clients (the operator) work against it;
//! - [`runtime`]: a local pod runtime that runs Deployment pods as local processes of our own
//!   binaries and reports pod/Deployment status (the kubelet + controller-manager's part);
//! - [`ingress`]: an ingress agent that renders nginx configuration from Ingress objects and
//!   reloads a real nginx (the ingress-nginx controller's part).
//!
//! The runtime and the ingress agent are ordinary API clients, like their real counterparts,
//! so they only meet the emulator over HTTP.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod ingress;
pub mod runtime;
pub mod up;
