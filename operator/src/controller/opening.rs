//! What the dataset's server says while its pods are unready: its `/status`, read through the
//! Service `<name>-status` (which lists unready pods too, see `build::service`), so that the
//! CR can say "opening" (files being recalled from tape) or "failed to open" (and why) instead
//! of the Deployment's bare "0 replicas available".
//!
//! Read over HTTP like the STAC item of registration, never by reading pods: the operator has
//! no pod permissions and needs none for this.

use std::time::Duration;

use cloudify_crds::k8s::CloudifyDataset;
use kube::ResourceExt;

use super::Context;
use super::registration::server_url;
use super::status::ServerView;

/// How long one `/status` read may take. Short: the reconcile waits for it, and a server
/// that does not answer in time is simply "unknown" (the Deployment's view stays).
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// The server's view of the CR's dataset through the Service `service`; anything but a 2xx
/// answer with the expected JSON in time is [`ServerView::Unknown`].
pub(super) async fn view(ctx: &Context, cr: &CloudifyDataset, service: &str) -> ServerView {
    let namespace = cr.namespace().unwrap_or_default();
    let url = format!(
        "{}/status",
        server_url(&ctx.config.server_url_template, service, &namespace)
    );
    let answer = match ctx.http.get(&url).timeout(STATUS_TIMEOUT).send().await {
        Ok(r) if r.status().is_success() => r.bytes().await,
        Ok(r) => {
            tracing::debug!(%url, status = %r.status(), "server status not readable");
            return ServerView::Unknown;
        }
        Err(e) => Err(e),
    };
    match answer {
        Ok(body) => ServerView::parse(&cr.spec.dataset.name, &body),
        Err(e) => {
            tracing::debug!(%url, "server status not readable: {e}");
            ServerView::Unknown
        }
    }
}
