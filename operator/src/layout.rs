//! The server pod's file system layout: the paths the operator mounts into every server
//! container.
//!
//! A module of its own, below both [`crate::validate`] (which refuses data volumes mounted
//! over these paths) and [`crate::build`] (which mounts them), so that validation does not
//! have to reach into the builder it runs before.

/// Where the ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/cloudify";
/// Key of the config file in the ConfigMap (and its file name under [`CONFIG_DIR`]).
pub const CONFIG_FILE: &str = "cloudify.yaml";
/// Where the access Secret (`spec.access.tokenSecret`) is mounted: the server's token file
/// is `{ACCESS_DIR}/{key}`.
pub const ACCESS_DIR: &str = "/etc/cloudify-access";
/// Writable cache for chunk indexes (an `emptyDir`: the root filesystem is read-only).
pub const CACHE_DIR: &str = "/var/cache/cloudify";
/// Suffix of the compute objects' names: `<name>-compute` (Deployment, Service, HPA, PDB of
/// the worker pool). Here because validation must check that the suffixed name is still a
/// Service name.
pub const COMPUTE_SUFFIX: &str = "-compute";
/// Suffix of the Service `<name>-status` through which the operator reads the server pods'
/// `/status` while they are unready (see `build::service::status_service`). Built only when
/// the suffixed name is still a Service name, so no name that was valid before is refused.
pub const STATUS_SUFFIX: &str = "-status";
/// Suffix of the Secret the operator creates for a dataset's own credentials:
/// `<name>-internal` (the compute shared secret, the key the operator signs registration
/// requests with). Checked by validation like the compute suffix.
pub const INTERNAL_SUFFIX: &str = "-internal";
/// Where that Secret is mounted in server and worker pods.
pub const INTERNAL_DIR: &str = "/etc/cloudify-internal";
/// Its key holding the secret the server sends its workers with every task.
pub const COMPUTE_SECRET_KEY: &str = "compute-secret";
/// Its key holding the signing key of URLs the operator signs to read a private dataset's
/// STAC item for registration (the dataset's `access.signedUrlKeyFile`).
pub const SIGNING_KEY_KEY: &str = "signing-key";
