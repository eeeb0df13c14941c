//! Command-line parts of the catalog feature: the `serve` flags (`--public-url`,
//! `--register`, ...), `cloudify catalog` and `cloudify stac export`.
//!
//! Kept here rather than in `main.rs` so the binary only wires subcommands, and the logic
//! is reachable from integration tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use cloudify_crds::{DatasetSpec, ServeConfig};

use super::client::{CatalogClient, read_token};
use super::describe::{Description, describe};
use super::{CatalogCtx, PublicUrl, item};
use crate::router::router;
use crate::serve::{ListenOpts, parse_port_range, run_app};
use crate::state::{AppState, Entry};

/// Catalog flags of `cloudify serve`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeCatalogArgs {
    /// Base URL clients use to reach this server (behind an ingress or proxy), used in STAC
    /// and intake documents. Default: the request's Host header.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Id of the STAC collection of this server's items.
    #[arg(long, value_name = "ID", default_value = super::DEFAULT_COLLECTION)]
    pub stac_collection: String,
    /// Register this server's items in a STAC API catalog (`cloudify catalog`) at start.
    #[arg(long, value_name = "CATALOG_URL")]
    pub register: Option<String>,
    /// File holding the catalog's bearer token (first line).
    #[arg(long, value_name = "FILE", requires = "register")]
    pub register_token_file: Option<PathBuf>,
    /// Remove the registered items from the catalog on clean shutdown.
    #[arg(long, requires = "register")]
    pub deregister_on_exit: bool,
    /// Register private datasets (`access.public: false`) too. Without it they are left out
    /// of the catalog: a STAC API answers anyone, and an item names the dataset, its
    /// variables and extent.
    #[arg(long, requires = "register")]
    pub register_private: bool,
}

/// Describes every ready dataset (blocking: reads coordinates); private ones only with
/// `private`.
pub fn describe_all(state: &AppState, ctx: &CatalogCtx, private: bool) -> Vec<Arc<Description>> {
    state
        .datasets
        .iter()
        .filter(|(id, _)| private || !state.access.is_private(id))
        .filter_map(|(_, e)| match e {
            Entry::Ready(s) => Some(ctx.description(&s.ds.name, || describe(&s.ds))),
            Entry::Failed(_) | Entry::Opening(_) => None,
        })
        .collect()
}

/// How often registration looks for datasets that finished opening in the background.
const REGISTER_POLL: Duration = Duration::from_secs(5);

/// Registers the items of `described` not registered yet (in `registered`), with the
/// collection of all of them. The catalog being down must never stop serving: retried for a
/// day, then given up (logged).
async fn register_new(
    client: &CatalogClient,
    described: &[Arc<Description>],
    base: &str,
    coll_id: &str,
    registered: &std::sync::Mutex<Vec<String>>,
) {
    let done = registered.lock().map(|r| r.clone()).unwrap_or_default();
    let refs: Vec<&Description> = described.iter().map(std::convert::AsRef::as_ref).collect();
    let new: Vec<&Description> = refs.iter().copied().filter(|d| !done.contains(&d.id)).collect();
    if new.is_empty() {
        return;
    }
    let coll = item::collection(
        coll_id,
        "cloudify datasets",
        &refs,
        &format!("{base}{}", item::COLLECTION_PATH),
        |id| format!("{base}{}", item::item_path(id)),
    );
    let items: Vec<_> = new.iter().map(|d| item::item(d, base, coll_id)).collect();
    match client.register(&coll, &items, Duration::from_secs(86_400)).await {
        Ok(()) => {
            tracing::info!(items = items.len(), collection = %coll_id, "registered in the catalog");
            if let Ok(mut r) = registered.lock() {
                r.extend(new.iter().map(|d| d.id.clone()));
            }
        }
        Err(e) => tracing::error!("registration in the catalog failed: {e}"),
    }
}

/// `cloudify serve` with the catalog routes' settings and optional registration.
pub async fn serve_with_catalog(
    state: Arc<AppState>,
    opts: ListenOpts,
    a: ServeCatalogArgs,
) -> anyhow::Result<()> {
    let public = match &a.public_url {
        Some(u) => PublicUrl::Fixed(u.clone()),
        None if opts.tls.is_some() => PublicUrl::FromRequestTls,
        None => PublicUrl::FromRequest,
    };
    let ctx = Arc::new(CatalogCtx::new(public, Some(a.stac_collection.clone())));
    let client = match &a.register {
        Some(url) => {
            let token = a.register_token_file.as_deref().map(read_token).transpose()?;
            Some(CatalogClient::new(url, token)?)
        }
        None => None,
    };
    let registered: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let (st, c2, cl, reg) = (state.clone(), ctx.clone(), client.clone(), registered.clone());
    let coll_id = a.stac_collection.clone();
    let explicit_base = a.public_url.clone();
    let register_private = a.register_private;
    run_app(opts, move |url| {
        if let Some(client) = cl {
            let base = explicit_base
                .unwrap_or_else(|| url.to_string())
                .trim_end_matches('/')
                .to_string();
            let (st, c2) = (st.clone(), c2.clone());
            tokio::spawn(async move {
                // The datasets ready now are registered at once; those still opening each
                // once it is ready (polled: openings take minutes to hours), so an item is
                // never registered for a dataset that cannot be read yet.
                let mut seen_ready = None;
                loop {
                    let counts = st.datasets.counts();
                    if seen_ready != Some(counts.ready) {
                        seen_ready = Some(counts.ready);
                        let (st, c2) = (st.clone(), c2.clone());
                        // Describing reads coordinates: off the async workers.
                        let ds = match tokio::task::spawn_blocking(move || {
                            describe_all(&st, &c2, register_private)
                        })
                        .await
                        {
                            Ok(d) => d,
                            Err(e) => {
                                tracing::error!("describing datasets for registration failed: {e}");
                                return;
                            }
                        };
                        register_new(&client, &ds, &base, &coll_id, &reg).await;
                    }
                    if counts.opening == 0 {
                        break;
                    }
                    tokio::time::sleep(REGISTER_POLL).await;
                }
            });
        }
        Ok(router(state).layer(Extension(ctx)))
    })
    .await?;
    if a.deregister_on_exit
        && let Some(client) = client
    {
        let ids = registered.lock().map(|r| r.clone()).unwrap_or_default();
        match tokio::time::timeout(
            Duration::from_secs(20),
            client.deregister(&a.stac_collection, &ids),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(items = ids.len(), "removed from the catalog"),
            Ok(Err(e)) => tracing::warn!("deregistration failed: {e}"),
            Err(_) => tracing::warn!("deregistration timed out"),
        }
    }
    Ok(())
}

/// `cloudify catalog`: the STAC API service.
#[derive(clap::Args, Debug)]
pub struct CatalogArgs {
    /// Directory of the store (created if missing; survives restarts).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// File holding the bearer token that transactions must present (first line). Without
    /// it the catalog is read-only.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 9100)]
    pub port: u16,
    /// Take the first free port of a range (overrides --port).
    #[arg(long, value_parser = parse_port_range)]
    pub port_range: Option<(u16, u16)>,
    /// Write the URL to this file once listening.
    #[arg(long)]
    pub listen_file: Option<PathBuf>,
    /// Public base URL of the API (links in responses). Default: the listening URL.
    #[arg(long)]
    pub public_url: Option<String>,
    /// Largest accepted request body in bytes (larger: 413).
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body: usize,
}

/// Runs `cloudify catalog` until shutdown: opens (or creates) the store off the async workers,
/// since it reads every document, then serves [`crate::stac_api::api::router`].
pub async fn run_catalog(a: CatalogArgs) -> anyhow::Result<()> {
    let token = a.token_file.as_deref().map(read_token).transpose()?;
    if token.is_none() {
        tracing::warn!("no --token-file: the catalog is read-only (transactions answer 403)");
    }
    let store = tokio::task::spawn_blocking({
        let d = a.data.clone();
        move || crate::stac_api::store::Store::open(&d)
    })
    .await??;
    let opts = ListenOpts {
        host: a.host,
        port: a.port,
        port_range: a.port_range,
        listen_file: a.listen_file,
        tls: None,
        conn: Default::default(),
    };
    let public = a.public_url.clone();
    run_app(opts, move |url| {
        let mut root = public.unwrap_or_else(|| url.to_string());
        if !root.ends_with('/') {
            root.push('/');
        }
        crate::stac_api::api::router(store, &root, token, a.max_body)
    })
    .await
}

/// `cloudify stac ...`.
#[derive(clap::Subcommand, Debug)]
pub enum StacCommand {
    /// Write a static STAC catalog (catalog.json, collection.json, items/) of datasets.
    Export(ExportArgs),
}

/// `cloudify stac export`: which datasets, where to write, and the server the assets name.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Dataset id followed by its files, when not using --config.
    #[arg(value_name = "NAME PATH_OR_GLOB...")]
    pub args: Vec<String>,
    /// YAML config with a `datasets:` list (as for `cloudify serve`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// URL of the server that serves these datasets (asset hrefs).
    #[arg(long)]
    pub public_url: String,
    /// Collection id.
    #[arg(long, default_value = super::DEFAULT_COLLECTION)]
    pub collection: String,
}

/// Runs `cloudify stac ...`: opens the datasets (to describe them) and writes the catalog.
pub fn run_stac(cmd: StacCommand) -> anyhow::Result<()> {
    let StacCommand::Export(a) = cmd;
    let specs: Vec<DatasetSpec> = match (&a.config, a.args.split_first()) {
        (Some(p), None) => {
            let text = std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            ServeConfig::from_yaml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                .datasets
        }
        (None, Some((name, sources))) if !sources.is_empty() => {
            let spec = DatasetSpec::new(name.clone(), sources.to_vec());
            spec.validate(0).map_err(|e| anyhow::anyhow!("{e}"))?;
            vec![spec]
        }
        _ => anyhow::bail!("give either --config FILE or NAME PATH_OR_GLOB..."),
    };
    let mut descs = Vec::new();
    for spec in &specs {
        let ds =
            crate::open::open_dataset(spec).map_err(|e| anyhow::anyhow!("dataset '{}': {e}", spec.name))?;
        let d = describe(&ds);
        for w in &d.warnings {
            tracing::warn!(dataset = %spec.name, "{w}");
        }
        descs.push(d);
    }
    let refs: Vec<&Description> = descs.iter().collect();
    let n = super::export::export(&refs, &a.out, &a.public_url, &a.collection)?;
    println!("wrote {n} item(s) to {}", a.out.display());
    Ok(())
}
