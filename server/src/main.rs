//! `cloudify`: the command line.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use cloudify_crds::{DatasetSpec, ServeConfig, StorageSpec};
use cloudify_server::{app, demo, serve};

/// mimalloc keeps freed chunk-sized buffers for reuse, where glibc malloc unmaps or trims them
/// and every request page-faults a fresh buffer in (measured: server CPU per pass-through chunk
/// 0.45 ms with glibc, about half of it page faults and munmap).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cloudify",
    version,
    about = "Serve Earth-System-Model output (netCDF/HDF5) as Zarr v2 and v3 over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve datasets over HTTP.
    Serve(Box<ServeArgs>),
    /// Write kerchunk/fsspec references (JSON v1 or Parquet) for files, aggregated like `serve` does.
    Index(IndexArgs),
    /// Execute processing work (computed chunks, partial reductions) for servers started
    /// with `serve --compute`; loads the same datasets as `serve`.
    Worker(Box<WorkerArgs>),
    /// Run a STAC API catalog service (search, transactions) over a local store.
    Catalog(cloudify_server::catalog::cli::CatalogArgs),
    /// STAC tools.
    #[command(subcommand)]
    Stac(cloudify_server::catalog::cli::StacCommand),
}

/// The datasets a process loads: `serve` and `worker` take the same (a worker must rebuild
/// exactly the datasets of the server it computes for).
#[derive(clap::Args)]
struct DataArgs {
    /// Dataset id, followed by its files (paths, file:// URLs or globs).
    #[arg(value_name = "NAME PATH_OR_GLOB...")]
    args: Vec<String>,
    /// Dimension to concatenate multiple files along (default: unlimited dim, else `time`).
    #[arg(long)]
    concat_dim: Option<String>,
    /// YAML file with a top-level `datasets:` list.
    #[arg(long, conflicts_with = "demo")]
    config: Option<PathBuf>,
    /// Serve the embedded demo dataset (id `demo`).
    #[arg(long)]
    demo: bool,
    /// Cache directory (demo data, chunk indexes). Default: $XDG_CACHE_HOME/cloudify.
    #[arg(long, env = "CLOUDIFY_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Don't read or write the index cache (always open files with the libraries).
    #[arg(long)]
    no_cache: bool,
    /// Worker threads for reading and decoding chunks (default: number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Listen at the latest SECS after start even if datasets are still opening: those go on
    /// opening in the background, are listed as `opening` and answer 503 + Retry-After until
    /// they are ready or failed. netCDF files on tape without an index (which must be
    /// recalled first) never hold the start.
    #[arg(long, value_name = "SECS", default_value = "15", value_parser = serve::parse_secs)]
    open_wait: Duration,
    #[command(flatten)]
    storage: StorageArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1", env = "CLOUDIFY_HOST")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 9000, env = "CLOUDIFY_PORT")]
    port: u16,
    /// Take the first free port of a range, e.g. 9000-9100 (overrides --port).
    #[arg(long, value_parser = serve::parse_port_range)]
    port_range: Option<(u16, u16)>,
    /// Write the URL the server listens on to this file once it is listening.
    #[arg(long)]
    listen_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); requires --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); requires --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Close a connection that has not sent a complete request head within SECS of
    /// connecting (TLS handshake included), or within SECS of the head's first byte on a
    /// keep-alive connection: slow-header ("slowloris") clients cannot hold connections. A
    /// response being sent is never cut, however slowly the client reads.
    #[arg(long, value_name = "SECS", default_value = "20", value_parser = serve::parse_secs)]
    header_timeout: Duration,
    /// Close a keep-alive connection (HTTP/1 or HTTP/2) after SECS without a request.
    #[arg(long, value_name = "SECS", default_value = "75", value_parser = serve::parse_secs)]
    idle_timeout: Duration,
    /// Serve at most N connections at once; further clients wait (in the listen backlog)
    /// until one closes, and a warning is logged. Default: the file descriptor limit
    /// (`ulimit -n`) less a reserve of a quarter of it (at least 64, at most half), at most
    /// 10000.
    #[arg(long, value_name = "N", value_parser = serve::parse_max_connections)]
    max_connections: Option<usize>,
    /// On SIGTERM/SIGINT, /readyz turns 503 and new connections are refused; for SECS,
    /// requests on open connections are still answered (HTTP/1 with `Connection: close`,
    /// HTTP/2 after a GOAWAY), then idle connections are closed.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = serve::parse_secs)]
    drain_period: Duration,
    /// On SIGTERM/SIGINT, exit at the latest after SECS (drain period included), closing
    /// the connections still open.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = serve::parse_secs)]
    shutdown_timeout: Duration,
    /// Keep up to BYTES of decoded stored chunks (local HDF5/netCDF-4 files) for reads that
    /// take parts of them: rechunked grids, reductions and hyperslabs whose neighbours need
    /// the same stored chunks decode each once. 0 turns the cache off. Default: 256 MiB,
    /// raised to hold the stored chunks one served chunk of a rechunked grid reads, up to a
    /// quarter of the process's memory limit (cgroup, else the machine's memory).
    #[arg(long, value_name = "BYTES")]
    decoded_cache_bytes: Option<u64>,
    /// Refuse (413) a computed chunk (views, ad-hoc groupby products, derived, BitRounded or
    /// rechunked variables) whose computation would read more than BYTES of source data,
    /// estimated from the chunk index (stored sizes) before reading. Suffixes KB/MB/GB/TB
    /// (powers of 1000) and KiB/MiB/GiB/TiB (powers of 1024) are accepted; 0 means no limit.
    /// Stored chunks served as they are are never capped.
    #[arg(long, value_name = "BYTES", default_value = "2GiB", value_parser = serve::parse_bytes)]
    max_source_bytes: u64,
    /// Keep up to BYTES of encoded computed chunks in memory (least recently used out), so
    /// a chunk fetched again is not computed again; keyed by the source files' identities
    /// and the pipeline, and checked against changed files before it is served. Units as for
    /// --max-source-bytes; 0 turns the cache off.
    #[arg(long, value_name = "BYTES", default_value = "256MiB", value_parser = serve::parse_bytes)]
    compute_cache_bytes: u64,
    /// URL of the JS map library (Leaflet 1.x) the map page `/datasets/{id}/map` loads; its
    /// stylesheet is the same URL with `.css` for `.js`. Point it at a local copy for
    /// offline use; cloudify serves no third-party code itself.
    #[arg(long, value_name = "URL", default_value = cloudify_server::state::DEFAULT_MAP_JS_URL)]
    map_js_url: String,
    #[command(flatten)]
    compute: ComputeArgs,
    #[command(flatten)]
    catalog: cloudify_server::catalog::cli::ServeCatalogArgs,
}

/// `serve --compute`: processing work sent to `cloudify worker` processes.
#[derive(clap::Args)]
struct ComputeArgs {
    /// Send processing work (computed chunks, partial reductions) to these compute workers
    /// (`cloudify worker`): a Kubernetes Service URL, or a comma-separated list of worker
    /// URLs. Without it everything is computed in this process.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    compute: Vec<String>,
    /// Tasks on the wire to the compute workers at once.
    #[arg(long, value_name = "N", default_value_t = 16, requires = "compute")]
    compute_concurrency: usize,
    /// Tasks waiting or running on the compute workers before requests are refused with
    /// 503 + Retry-After (backpressure instead of unbounded memory).
    #[arg(long, value_name = "N", default_value_t = 256, requires = "compute")]
    compute_queue: usize,
    /// Give up on a worker after SECS without an answer to one task and try another.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = serve::parse_secs, requires = "compute")]
    compute_timeout: Duration,
    /// Send the shared secret in this file with every task (`Authorization: Bearer`); the
    /// workers' `--secret-file` must hold the same. On Kubernetes the operator creates and
    /// mounts it.
    #[arg(long, value_name = "FILE", env = "CLOUDIFY_COMPUTE_SECRET_FILE")]
    compute_secret_file: Option<PathBuf>,
}

/// `cloudify worker`: executes processing work for servers started with `--compute`.
#[derive(clap::Args)]
struct WorkerArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1", env = "CLOUDIFY_HOST")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 9100, env = "CLOUDIFY_PORT")]
    port: u16,
    /// Take the first free port of a range, e.g. 9100-9200 (overrides --port).
    #[arg(long, value_parser = serve::parse_port_range)]
    port_range: Option<(u16, u16)>,
    /// Write the URL the worker listens on to this file once it is listening.
    #[arg(long)]
    listen_file: Option<PathBuf>,
    /// Keep up to BYTES of decoded stored chunks (as for `serve`; sized automatically when
    /// not given).
    #[arg(long, value_name = "BYTES")]
    decoded_cache_bytes: Option<u64>,
    /// Take tasks only when they carry the shared secret in this file (the server's
    /// `--compute-secret-file`); others get 401. Required unless the worker listens on a
    /// loopback address: a worker reads whatever its config can reach for anyone it obeys.
    #[arg(long, value_name = "FILE", env = "CLOUDIFY_COMPUTE_SECRET_FILE")]
    secret_file: Option<PathBuf>,
}

/// Object-store settings for a dataset given on the command line: the `storage:` block of a
/// config file (`DatasetSpec.storage`), for `s3://`, `gs://`, `az://` and `https://` sources.
/// Secrets belong in `--storage-credentials-file` (or the environment), not in arguments that
/// other users of the machine can see in the process list.
#[derive(clap::Args, Clone, Debug, Default)]
struct StorageArgs {
    /// Endpoint of an S3-compatible service (MinIO, Ceph, ...) or of an Azure/GCS emulator.
    #[arg(long = "storage-endpoint", value_name = "URL")]
    storage_endpoint: Option<String>,
    /// Region (S3).
    #[arg(long = "storage-region", value_name = "REGION")]
    storage_region: Option<String>,
    /// Public data: unsigned requests, no credentials looked for.
    #[arg(long = "storage-anonymous")]
    storage_anonymous: bool,
    /// Allow a plain `http://` endpoint.
    #[arg(long = "storage-allow-http")]
    storage_allow_http: bool,
    /// File with credentials and options (`key=value` lines or one JSON object).
    #[arg(long = "storage-credentials-file", value_name = "FILE")]
    storage_credentials_file: Option<String>,
    /// Further object_store option (repeatable), e.g. `aws_virtual_hosted_style_request=true`.
    #[arg(long = "storage-option", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    storage_option: Vec<(String, String)>,
}

impl StorageArgs {
    /// The storage block these flags describe; `None` when no flag was given.
    fn spec(&self) -> Option<StorageSpec> {
        let given = self.storage_endpoint.is_some()
            || self.storage_region.is_some()
            || self.storage_anonymous
            || self.storage_allow_http
            || self.storage_credentials_file.is_some()
            || !self.storage_option.is_empty();
        given.then(|| StorageSpec {
            endpoint: self.storage_endpoint.clone(),
            region: self.storage_region.clone(),
            anonymous: self.storage_anonymous,
            allow_http: self.storage_allow_http,
            credentials_file: self.storage_credentials_file.clone(),
            options: self.storage_option.iter().cloned().collect(),
            ..StorageSpec::default()
        })
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("'{s}': expected KEY=VALUE")),
    }
}

#[derive(clap::Args)]
struct IndexArgs {
    /// Source files: paths, URLs (file://, s3://, gs://, az://, https://) or globs.
    #[arg(required_unless_present = "config", value_name = "SOURCES")]
    sources: Vec<String>,
    /// Take the dataset (sources, storage, format, concat dim, reference roots) from this
    /// `cloudify serve --config` file instead of the arguments; with --dataset NAME when it
    /// lists more than one.
    #[arg(long, conflicts_with_all = ["sources", "concat_dim", "reference_roots"])]
    config: Option<PathBuf>,
    /// Which dataset of --config to index.
    #[arg(long, requires = "config", value_name = "NAME")]
    dataset: Option<String>,
    /// Index cache directory (as for `serve`): indexes made by a server are reused, and the
    /// ones made here serve the next server start. Default: $XDG_CACHE_HOME/cloudify.
    #[arg(long, env = "CLOUDIFY_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Neither read nor write the index cache.
    #[arg(long)]
    no_cache: bool,
    #[command(flatten)]
    storage: StorageArgs,
    /// Output: kerchunk JSON v1 (`*.json`) or a kerchunk Parquet reference directory
    /// (`*.parquet` / `*.parq`, fsspec's `LazyReferenceMapper` layout).
    #[arg(short, long)]
    output: PathBuf,
    /// Dimension to concatenate multiple files along (default: unlimited dim, else `time`).
    #[arg(long)]
    concat_dim: Option<String>,
    /// Directory that references in kerchunk SOURCES may point into, besides the reference
    /// file's own directory (repeatable).
    #[arg(long = "reference-root", value_name = "DIR")]
    reference_roots: Vec<String>,
    /// References per Parquet file (Parquet output only).
    #[arg(long, default_value_t = cloudify_server::kerchunk::parquet::DEFAULT_RECORD_SIZE)]
    record_size: usize,
    /// Store a variable inline (its values inside the references) only if it has at most
    /// BYTES bytes; every other variable is referenced as byte ranges of its files, or left
    /// out with a warning saying why. `0` writes no inline data at all, which VirtualiZarr
    /// needs (it refuses inlined chunks). Default: coordinates and other small variables up
    /// to 16 KiB, and variables whose layout cannot be referenced up to 4 MiB, are inlined,
    /// as the /kerchunk route serves them.
    #[arg(long, value_name = "BYTES")]
    inline_threshold: Option<u64>,
}

/// Reference formats `cloudify index` writes, chosen by the output's extension.
enum RefsFormat {
    Json,
    Parquet,
}

fn run_index(a: IndexArgs) -> anyhow::Result<()> {
    let format = match a.output.extension().and_then(|e| e.to_str()) {
        Some("json") => RefsFormat::Json,
        Some("parquet" | "parq") => RefsFormat::Parquet,
        _ => anyhow::bail!(
            "--output {}: unknown reference format; use a name ending in .json (kerchunk JSON) or .parquet (kerchunk Parquet directory)",
            a.output.display()
        ),
    };
    if a.record_size == 0 {
        anyhow::bail!("--record-size must be at least 1");
    }
    let spec = index_spec(&a)?;
    let cache =
        (!a.no_cache).then(|| cloudify_server::open::cache::IndexCache::new(&cache_dir(a.cache_dir.clone())));
    let ds = cloudify_server::open::open_dataset_cached(&spec, cache.as_ref())?;
    let inline = a.inline_threshold.map_or(
        cloudify_server::kerchunk::Inline::AsNeeded,
        cloudify_server::kerchunk::Inline::Threshold,
    );
    let mut refs = cloudify_server::kerchunk::build_with(&ds, inline);
    refs.codecs_as_filters();
    for (v, why) in &refs.skipped {
        eprintln!("cloudify: warning: variable '{v}' left out: {why}");
    }
    match format {
        RefsFormat::Json => {
            let tmp = a.output.with_extension("json.tmp");
            std::fs::write(&tmp, refs.to_json()).map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &a.output).map_err(|e| anyhow::anyhow!("{}: {e}", a.output.display()))?;
        }
        RefsFormat::Parquet => refs.write_parquet(&a.output, a.record_size)?,
    }
    eprintln!(
        "cloudify: wrote {} references to {} files into {}",
        refs.entries.len(),
        refs.files.len(),
        a.output.display()
    );
    Ok(())
}

/// The dataset `cloudify index` writes references for: from --config (one dataset, or the
/// one named by --dataset) or from the arguments and storage flags.
fn index_spec(a: &IndexArgs) -> anyhow::Result<DatasetSpec> {
    if let Some(path) = &a.config {
        if a.storage.spec().is_some() {
            anyhow::bail!(
                "--config: give the storage settings in the file's `storage:` block, not as --storage-* flags"
            );
        }
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let cfg = ServeConfig::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let names: Vec<&str> = cfg.datasets.iter().map(|d| d.name.as_str()).collect();
        return match &a.dataset {
            Some(want) => cfg
                .datasets
                .iter()
                .find(|d| &d.name == want)
                .cloned()
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: no dataset '{want}' (it lists: {})",
                        path.display(),
                        names.join(", ")
                    )
                }),
            None if cfg.datasets.len() == 1 => Ok(cfg.datasets[0].clone()),
            None => anyhow::bail!(
                "{}: lists {} datasets ({}); choose one with --dataset NAME",
                path.display(),
                cfg.datasets.len(),
                names.join(", ")
            ),
        };
    }
    let spec = DatasetSpec {
        concat_dim: a.concat_dim.clone(),
        reference_roots: a.reference_roots.clone(),
        storage: a.storage.spec(),
        ..DatasetSpec::new("index", a.sources.clone())
    };
    spec.validate(0).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(spec)
}

/// The memory this process may use: its cgroup's limit (`memory.max`, cgroup v2, as in a
/// Kubernetes pod with a memory limit), else the machine's memory (`MemTotal`); 1 GiB when
/// neither can be read.
fn memory_limit() -> u64 {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb.saturating_mul(1024))
    });
    match (cgroup, total) {
        (Some(c), Some(t)) => c.min(t),
        (Some(c), None) => c,
        (None, Some(t)) => t,
        (None, None) => 1 << 30,
    }
}

fn cache_dir(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("cloudify")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cloudify")))
        .unwrap_or_else(|| std::env::temp_dir().join("cloudify-cache"))
}

fn specs(a: &DataArgs) -> anyhow::Result<Vec<DatasetSpec>> {
    if a.demo {
        if !a.args.is_empty() {
            anyhow::bail!("--demo takes no NAME/PATH arguments");
        }
        let glob = demo::ensure_demo(&cache_dir(a.cache_dir.clone()))?;
        return Ok(vec![DatasetSpec {
            title: Some("cloudify demo dataset".into()),
            ..DatasetSpec::new("demo", vec![glob])
        }]);
    }
    if let Some(path) = &a.config {
        if !a.args.is_empty() {
            anyhow::bail!("--config and NAME PATH arguments are mutually exclusive");
        }
        if a.storage.spec().is_some() {
            anyhow::bail!(
                "--config: give the storage settings in each dataset's `storage:` block, not as --storage-* flags"
            );
        }
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let cfg = ServeConfig::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok(cfg.datasets);
    }
    let Some((name, sources)) = a.args.split_first() else {
        anyhow::bail!("nothing to serve: give NAME PATH_OR_GLOB..., --config FILE or --demo");
    };
    if sources.is_empty() {
        anyhow::bail!("dataset '{name}': no files given (usage: cloudify serve NAME PATH_OR_GLOB...)");
    }
    let spec = DatasetSpec {
        concat_dim: a.concat_dim.clone(),
        storage: a.storage.spec(),
        ..DatasetSpec::new(name.clone(), sources.to_vec())
    };
    spec.validate(0).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(vec![spec])
}

/// The datasets of `a` loaded (as `serve` loads them; those still opening after
/// `--open-wait` open in the background), with the thread count used.
fn load(
    a: &DataArgs,
    decoded_cache_bytes: Option<u64>,
) -> anyhow::Result<(Vec<DatasetSpec>, app::Loaded, usize)> {
    let specs = specs(a)?;
    let decoded = cloudify_server::chunk::cache::cache();
    match decoded_cache_bytes {
        Some(b) => decoded.set_budget(b),
        None => decoded.set_auto(memory_limit() / 4),
    }
    let threads = a
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(std::num::NonZero::get)
                .unwrap_or(2)
        })
        .max(1);
    let cache =
        (!a.no_cache).then(|| cloudify_server::open::cache::IndexCache::new(&cache_dir(a.cache_dir.clone())));
    let loaded = app::start(&specs, threads, cache.as_ref(), Some(a.open_wait))?;
    Ok((specs, loaded, threads))
}

/// `cloudify worker`: the same datasets as `serve`, the task routes instead of the data
/// routes.
fn run_worker(a: WorkerArgs) -> anyhow::Result<()> {
    let secret = match &a.secret_file {
        Some(p) => Some(Arc::new(cloudify_server::compute::secret::SharedSecret::open(p)?)),
        None => {
            let loopback = a.host == "localhost"
                || a.host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                anyhow::bail!(
                    "cloudify worker --host {}: a worker listening beyond this machine needs --secret-file (or CLOUDIFY_COMPUTE_SECRET_FILE) so that only its server can send it tasks",
                    a.host
                );
            }
            None
        }
    };
    let (_, app::Loaded { state, .. }, threads) = load(&a.data, a.decoded_cache_bytes)?;
    for (name, e) in state.datasets.iter() {
        if let cloudify_server::state::Entry::Failed(why) = e {
            eprintln!("cloudify worker: dataset '{name}' failed: {why}");
        }
    }
    let state = Arc::new(state);
    let opts = serve::ListenOpts {
        host: a.host,
        port: a.port,
        port_range: a.port_range,
        listen_file: a.listen_file,
        tls: None,
        conn: serve::ConnOpts {
            header_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(75),
            max_connections: None,
            drain: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(10),
            shutdown: state.shutdown.clone(),
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.clamp(1, 4))
        .enable_all()
        .build()?;
    rt.block_on(serve::run_app(opts, move |_| {
        cloudify_server::compute::worker::router(state, secret)
    }))
}

fn run_serve(a: ServeArgs) -> anyhow::Result<()> {
    let (
        specs,
        app::Loaded {
            mut state,
            sources_not_found,
        },
        threads,
    ) = load(&a.data, a.decoded_cache_bytes)?;
    if !a.compute.compute.is_empty() {
        let remote =
            cloudify_server::compute::client::Remote::new(cloudify_server::compute::client::Settings {
                workers: a.compute.compute.clone(),
                concurrency: a.compute.compute_concurrency,
                queue: a.compute.compute_queue,
                timeout: a.compute.compute_timeout,
                secret: a
                    .compute
                    .compute_secret_file
                    .as_ref()
                    .map(cloudify_server::compute::secret::SharedSecret::open)
                    .transpose()?
                    .map(Arc::new),
            })?;
        remote.metrics.register(&state.metrics.registry)?;
        tracing::info!(workers = %a.compute.compute.join(","), "processing work goes to the compute workers");
        cloudify_server::processing::exec::set_remote(Some(Arc::new(remote)));
    }
    state.max_source_bytes = a.max_source_bytes;
    state.map_js_url = a.map_js_url.clone();
    state.compute_cache = cloudify_server::state::chunk_cache::ChunkCache::new(a.compute_cache_bytes);
    let counts = state.datasets.counts();
    let ready = counts.ready;
    for (name, e) in state.datasets.iter() {
        if let cloudify_server::state::Entry::Failed(why) = e {
            eprintln!("cloudify: dataset '{name}' failed: {why}");
        }
    }
    if ready == 0 && specs.len() == 1 && sources_not_found.len() == 1 {
        // The one dataset asked for names files or objects that are not there (a typo in a
        // path, glob, bucket or credentials): say so and stop, as any command would. A
        // dataset whose files exist but cannot be read (truncated, corrupt) keeps the server
        // up instead, so that /status and /readyz say why (in Kubernetes the operator reads
        // them; an exiting process would only crash-loop).
        anyhow::bail!("no dataset could be opened");
    }
    if ready == 0 && counts.opening == 0 {
        tracing::warn!(
            "no dataset could be opened: serving /status and /readyz (not ready) with the reasons"
        );
    }
    let opts = serve::ListenOpts {
        host: a.host,
        port: a.port,
        port_range: a.port_range,
        listen_file: a.listen_file,
        tls: a.tls_cert.zip(a.tls_key),
        conn: serve::ConnOpts {
            header_timeout: a.header_timeout,
            idle_timeout: a.idle_timeout,
            max_connections: a.max_connections,
            drain: a.drain_period,
            shutdown_timeout: a.shutdown_timeout,
            shutdown: state.shutdown.clone(),
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.clamp(1, 4))
        .enable_all()
        .build()?;
    rt.block_on(cloudify_server::catalog::cli::serve_with_catalog(
        Arc::new(state),
        opts,
        a.catalog,
    ))
}

fn main() -> ExitCode {
    // No transparent huge pages for this process: mimalloc asks for them (MADV_HUGEPAGE), and
    // every decoded chunk buffer then faults in a freshly zeroed 2 MiB page. Measured on the
    // processing bench (rechunk tiles and a groupby over 730 zlib chunks): server CPU -30 to
    // -40 %, kernel time (clear_page) from about half of it to a sixth. Best effort: an old
    // kernel without the prctl just keeps THP.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse();
    // Traces (OTEL_* variables) are exported by the long-running services only; the one-shot
    // tools just log.
    let service = match &cli.command {
        Command::Serve(_) => "cloudify-serve",
        Command::Worker(_) => "cloudify-worker",
        Command::Catalog(_) => "cloudify-catalog",
        Command::Index(_) | Command::Stac(_) => "",
    };
    let log_filter = tracing_subscriber::EnvFilter::try_from_env("CLOUDIFY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let telemetry = if service.is_empty() {
        tracing_subscriber::fmt()
            .with_env_filter(log_filter)
            .with_writer(std::io::stderr)
            .init();
        None
    } else {
        match cloudify_telemetry::init(service, log_filter, cloudify_telemetry::LogTo::Stderr, None) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("cloudify: error: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let result = match cli.command {
        Command::Serve(a) => run_serve(*a),
        Command::Index(a) => run_index(a),
        Command::Worker(a) => run_worker(*a),
        Command::Catalog(a) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(cloudify_server::catalog::cli::run_catalog(a))),
        Command::Stac(c) => cloudify_server::catalog::cli::run_stac(c),
    };
    // Cache entries computed at start-up are still being written: finish them, so the next
    // start (or another replica) finds them.
    cloudify_server::background::wait(std::time::Duration::from_secs(60));
    // The server has drained (SIGTERM/SIGINT) and its runtime is gone: export the spans still
    // queued before the process exits.
    if let Some(t) = telemetry {
        t.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloudify: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
