//! OpenTelemetry traces for the cloudify binaries (`cloudify serve`, `worker`, `catalog` and
//! the operator).
//!
//! Configured by the standard `OTEL_*` variables ([`Config::from_env`]) and **off unless an
//! OTLP endpoint is named**: without one, [`init`] installs the same stderr log subscriber as
//! before and nothing else, [`enabled`] is false, and the helpers here return at once (one
//! relaxed atomic load), so a server that does not trace pays nothing for it.
//!
//! When on, spans go over OTLP/HTTP (protobuf) from the SDK's batch thread, the W3C
//! TraceContext propagator is installed globally, [`head_sample`] makes an incoming
//! `traceparent` the parent of a request span, and [`inject`] writes the current span's
//! `traceparent` into outgoing request headers (compute workers, the STAC API, tape drivers).
//!
//! What spans carry is up to their callers; the rule in cloudify is that no span records
//! headers, query strings or tokens (signed URLs carry their signature in the query).
//!
//! **Head sampling.** The sampler's decision for a request is taken once, up front, by
//! [`head_sample`] (the configured sampler asked with the caller's parent, or with the trace id
//! the request span will get); a request it drops runs [`suppressed`]: no span is created for
//! it or anything it does, here or on the threads its work is handed to ([`traced_span`]
//! carries the decision). Why: `tracing-opentelemetry` builds every span — attributes, ids,
//! the SDK span the sampler then drops — so with 1 % sampling an unsampled pass-through request
//! still cost ~28 k instructions of span work (`examples/trace_timing.rs` under callgrind),
//! about as much as the rest of the request in user space.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, SdkTracerProvider, ShouldSample,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Whether spans are exported: read on every request by the helpers below, so it is one atomic
/// instead of a look at the global propagator or subscriber.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether OpenTelemetry export is on in this process ([`init`] found an endpoint).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

thread_local! {
    /// Set while the work of a request the sampler dropped runs on this thread: no span of
    /// it is exported (see [`ExportFilter`]).
    static SUPPRESSED: Cell<bool> = const { Cell::new(false) };
    /// The trace id [`head_sample`] chose for the root span being started on this thread,
    /// handed to the SDK through [`HeadIds`] so that its sampler sees the same id.
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// The configured sampler, asked by [`head_sample`] (the same one the SDK asks).
static SAMPLER: OnceLock<Sampler> = OnceLock::new();

/// Sets [`SUPPRESSED`] for its lifetime and restores the previous value.
struct SuppressGuard(bool);

impl SuppressGuard {
    fn on() -> Self {
        Self(SUPPRESSED.replace(true))
    }
}

impl Drop for SuppressGuard {
    fn drop(&mut self) {
        SUPPRESSED.set(self.0);
    }
}

/// The current span and the request's sampling decision, to be carried by work handed to
/// another thread so that its spans are children of the request's (or, for a request the
/// sampler dropped, not created at all). Nothing to carry when traces are off.
#[derive(Debug)]
pub struct Carry {
    span: tracing::Span,
    suppressed: bool,
}

/// [`Carry::entered`]'s guard.
#[derive(Debug)]
pub struct Entered {
    _span: tracing::span::EnteredSpan,
    _suppress: Option<SuppressGuard>,
}

impl std::fmt::Debug for SuppressGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SuppressGuard")
    }
}

impl Carry {
    /// Runs `f` in the carried span and decision.
    pub fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        let _s = self.suppressed.then(SuppressGuard::on);
        self.span.in_scope(f)
    }

    /// Enters the carried span and decision until the guard is dropped.
    pub fn entered(self) -> Entered {
        Entered {
            _suppress: self.suppressed.then(SuppressGuard::on),
            _span: self.span.entered(),
        }
    }

    /// `fut`, polled in the carried span and decision.
    pub fn instrument<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        let suppressed = self.suppressed;
        let inner = tracing::Instrument::instrument(fut, self.span);
        async move {
            let mut inner = std::pin::pin!(inner);
            std::future::poll_fn(|cx| {
                let _s = suppressed.then(SuppressGuard::on);
                inner.as_mut().poll(cx)
            })
            .await
        }
    }
}

/// The current span and sampling decision, for work handed to another thread (see
/// [`Carry`]). Lives here, below every server layer, so that storage and state both use it
/// without importing each other.
pub fn traced_span() -> Carry {
    if enabled() {
        Carry {
            span: tracing::Span::current(),
            suppressed: SUPPRESSED.get(),
        }
    } else {
        Carry {
            span: tracing::Span::none(),
            suppressed: false,
        }
    }
}

/// `fut` run as the work of a request the sampler dropped: no span is created while it is
/// polled (nor, through [`traced_span`], by the work it hands to other threads).
pub async fn suppressed<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        let _s = SuppressGuard::on();
        fut.as_mut().poll(cx)
    })
    .await
}

/// A request the sampler records: how to start its span ([`Head::start`]).
#[derive(Debug)]
pub struct Head {
    /// The caller's trace (`traceparent`), if it sent a valid one.
    parent: Option<opentelemetry::Context>,
    /// The trace id of a new trace (no parent), as the sampler was asked with it.
    trace_id: TraceId,
}

/// The sampler's decision for a request with these `headers`, taken before any span exists:
/// `None` when traces are off or the sampler drops it (run it [`suppressed`]), else how to
/// start its span. The configured sampler is asked exactly as the SDK would ask it for the
/// request span: with the caller's parent (`parentbased_*` follow its sampled flag), or for a
/// new trace with the trace id the span will then get, so ratio samplers decide alike.
pub fn head_sample(headers: &http::HeaderMap) -> Option<Head> {
    if !enabled() {
        return None;
    }
    let sampler = SAMPLER.get()?;
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    decide(sampler, cx)
}

/// [`head_sample`]'s decision by `sampler` for a request whose extracted caller context is `cx`.
fn decide(sampler: &Sampler, cx: opentelemetry::Context) -> Option<Head> {
    let remote = cx.span().span_context().clone();
    let (parent, trace_id, ask) = if remote.is_valid() {
        (Some(cx.clone()), remote.trace_id(), cx)
    } else {
        let id = RandomIdGenerator::default().new_trace_id();
        (None, id, opentelemetry::Context::new())
    };
    let r = sampler.should_sample(Some(&ask), trace_id, "request", &SpanKind::Server, &[], &[]);
    match r.decision {
        SamplingDecision::Drop => None,
        SamplingDecision::RecordOnly | SamplingDecision::RecordAndSample => Some(Head { parent, trace_id }),
    }
}

impl Head {
    /// Creates the request span with `make` and starts it now: child of the caller's trace,
    /// or the root of a new trace with the id the sampler was asked with.
    pub fn start(self, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
        let span = make();
        match self.parent {
            Some(p) => {
                let _ = span.set_parent(p);
            }
            None => NEXT_TRACE_ID.set(Some(self.trace_id)),
        }
        // builds the OpenTelemetry span (ids, sampler) on this thread, now
        let _ = span.context();
        NEXT_TRACE_ID.set(None);
        span
    }
}

/// The SDK's id generator, except that a root span started by [`Head::start`] gets the trace
/// id its request was sampled with.
#[derive(Debug, Default)]
struct HeadIds(RandomIdGenerator);

impl IdGenerator for HeadIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID.take().unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// A wrong `OTEL_*` value: the process refuses to start rather than silently not tracing (or
/// tracing everything when a ratio was meant).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable holds a value outside the ones the specification (or this exporter) allows.
    #[error("{var}={value:?}: {why}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        why: String,
    },
}

/// Setting up the exporter failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// See [`ConfigError`].
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The OTLP exporter could not be built (its HTTP client, an endpoint it refuses).
    #[error("OpenTelemetry: cannot build the OTLP exporter: {0}")]
    Exporter(String),
    /// A global subscriber was set already (a second `init` in one process).
    #[error("cannot install the log/trace subscriber: {0}")]
    Subscriber(String),
}

/// Which spans are recorded (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Clone, Debug, PartialEq)]
pub enum SamplerConfig {
    /// Every trace.
    AlwaysOn,
    /// No trace.
    AlwaysOff,
    /// This fraction of trace ids (0..=1).
    TraceIdRatio(f64),
    /// The caller's decision (`traceparent` sampled flag) when there is a parent, else the
    /// inner sampler: the specification's default is `ParentBased(AlwaysOn)`.
    ParentBased(Box<SamplerConfig>),
}

impl SamplerConfig {
    fn to_sdk(&self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(r) => Sampler::TraceIdRatioBased(*r),
            Self::ParentBased(inner) => Sampler::ParentBased(Box::new(inner.to_sdk())),
        }
    }
}

/// The trace export configuration of one process.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Full OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// `service.name` of the spans.
    pub service_name: String,
    /// See [`SamplerConfig`].
    pub sampler: SamplerConfig,
}

/// `var`'s value with surrounding blanks cut; unset and empty are the same (as the
/// specification says: an empty value is treated as unset), which lets a Helm chart or a
/// Deployment leave a variable empty to mean "off".
fn var(get: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn invalid(var: &'static str, value: &str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_string(),
        why: why.into(),
    }
}

/// An http(s) URL with a host, or why not (checked here so that a typo fails at start-up with
/// the variable's name instead of at the first export).
fn check_url(name: &'static str, v: &str) -> Result<(), ConfigError> {
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or_else(|| invalid(name, v, "an http:// or https:// URL is expected (OTLP/HTTP)"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        return Err(invalid(name, v, "the URL names no host"));
    }
    v.parse::<http::Uri>()
        .map_err(|e| invalid(name, v, format!("not a valid URL: {e}")))?;
    Ok(())
}

fn parse_ratio(arg: Option<&str>) -> Result<f64, ConfigError> {
    let Some(a) = arg else { return Ok(1.0) };
    match a.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(invalid(
            "OTEL_TRACES_SAMPLER_ARG",
            a,
            "a sampling ratio between 0 and 1 is expected",
        )),
    }
}

impl Config {
    /// The configuration from this process's environment; `None` when traces are off.
    pub fn from_env(default_service: &str) -> Result<Option<Self>, ConfigError> {
        Self::from_vars(|k| std::env::var(k).ok(), default_service)
    }

    /// The configuration from the variables `get` returns; `None` when traces are off: no
    /// endpoint (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`),
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Traces are off by default
    /// (the specification's default is an exporter to localhost, which in a pod is nothing but
    /// failed connections).
    pub fn from_vars(
        get: impl Fn(&str) -> Option<String>,
        default_service: &str,
    ) -> Result<Option<Self>, ConfigError> {
        if let Some(d) = var(&get, "OTEL_SDK_DISABLED") {
            match d.to_ascii_lowercase().as_str() {
                "true" => return Ok(None),
                "false" => {}
                _ => return Err(invalid("OTEL_SDK_DISABLED", &d, "true or false is expected")),
            }
        }
        if let Some(e) = var(&get, "OTEL_TRACES_EXPORTER") {
            // A list in the specification; one exporter is what this SDK build has.
            let names: Vec<&str> = e.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            if names.contains(&"none") {
                return Ok(None);
            }
            if let Some(other) = names.iter().find(|n| **n != "otlp") {
                return Err(invalid(
                    "OTEL_TRACES_EXPORTER",
                    &e,
                    format!("exporter '{other}' is not available: use otlp or none"),
                ));
            }
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(p) = var(&get, name) {
                if p != "http/protobuf" {
                    return Err(invalid(
                        name,
                        &p,
                        "only http/protobuf is supported (OTLP/HTTP, collector port 4318)",
                    ));
                }
                break;
            }
        }
        // The per-signal URL is used as given; the base one gets the signal path appended
        // (OTLP exporter specification, "Endpoint URLs for OTLP/HTTP").
        let endpoint = if let Some(e) = var(&get, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            check_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &e)?;
            e
        } else if let Some(e) = var(&get, "OTEL_EXPORTER_OTLP_ENDPOINT") {
            check_url("OTEL_EXPORTER_OTLP_ENDPOINT", &e)?;
            format!("{}/v1/traces", e.trim_end_matches('/'))
        } else {
            return Ok(None);
        };
        let arg = var(&get, "OTEL_TRACES_SAMPLER_ARG");
        let sampler = match var(&get, "OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("parentbased_always_on") => {
                SamplerConfig::ParentBased(Box::new(SamplerConfig::AlwaysOn))
            }
            Some("always_on") => SamplerConfig::AlwaysOn,
            Some("always_off") => SamplerConfig::AlwaysOff,
            Some("traceidratio") => SamplerConfig::TraceIdRatio(parse_ratio(arg.as_deref())?),
            Some("parentbased_always_off") => SamplerConfig::ParentBased(Box::new(SamplerConfig::AlwaysOff)),
            Some("parentbased_traceidratio") => SamplerConfig::ParentBased(Box::new(
                SamplerConfig::TraceIdRatio(parse_ratio(arg.as_deref())?),
            )),
            Some(other) => {
                return Err(invalid(
                    "OTEL_TRACES_SAMPLER",
                    other,
                    "one of always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off, parentbased_traceidratio is expected",
                ));
            }
        };
        let service_name = var(&get, "OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_string());
        Ok(Some(Self {
            endpoint,
            service_name,
            sampler,
        }))
    }
}

/// The tracer provider of a process with traces on; [`Telemetry::shutdown`] (or dropping it)
/// exports the spans still queued, so call it after the server has drained on SIGTERM.
#[must_use = "dropping the guard shuts the exporter down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the queued spans and stops the exporter (blocking, bounded by the exporter's
    /// timeout). A no-op when traces are off. Call it outside async code: the SDK's batch
    /// thread does the export and this waits for it.
    pub fn shutdown(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(p) = self.provider.take() {
            ENABLED.store(false, Ordering::Relaxed);
            if let Err(e) = p.shutdown() {
                eprintln!("OpenTelemetry: flushing spans at exit failed: {e}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Which spans and events the exporter gets: cloudify's own spans down to DEBUG (the
/// per-dataset and per-chunk ones are DEBUG so that they cost nothing with traces off), other
/// crates' spans and all events down to INFO (events become span events).
fn export_filter(meta: &tracing::Metadata<'_>) -> bool {
    let own = meta.target().starts_with("cloudify");
    if meta.is_span() && own {
        *meta.level() <= tracing::Level::DEBUG
    } else {
        *meta.level() <= tracing::Level::INFO
    }
}

/// The exporter's filter: [`export_filter`], and no span at all while the work of a request
/// the sampler dropped runs ([`suppressed`]). Spans are asked per span (their callsites are
/// "sometimes"), events per callsite.
struct ExportFilter;

impl<S> tracing_subscriber::layer::Filter<S> for ExportFilter {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _cx: &tracing_subscriber::layer::Context<'_, S>) -> bool {
        export_filter(meta) && !(meta.is_span() && SUPPRESSED.get())
    }

    fn callsite_enabled(&self, meta: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        if !export_filter(meta) {
            tracing::subscriber::Interest::never()
        } else if meta.is_span() {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::always()
        }
    }
}

/// Where the logs go: the server logs to stderr, the operator to stdout (as each did before
/// traces existed).
#[derive(Clone, Copy, Debug)]
pub enum LogTo {
    /// Standard error.
    Stderr,
    /// Standard output.
    Stdout,
}

/// Installs the global subscriber: logs filtered by `log_filter` (as every binary had) and,
/// when [`Config::from_env`] finds an endpoint, the OpenTelemetry layer exporting spans of
/// `default_service` (unless `OTEL_SERVICE_NAME` names another). `ansi`: colours in the logs
/// (`None`: tracing-subscriber's default, which honours `NO_COLOR`). With traces off the
/// subscriber is exactly the plain log subscriber.
pub fn init(
    default_service: &str,
    log_filter: tracing_subscriber::EnvFilter,
    log_to: LogTo,
    ansi: Option<bool>,
) -> Result<Telemetry, InitError> {
    let config = Config::from_env(default_service)?;
    let writer = match log_to {
        LogTo::Stderr => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
        LogTo::Stdout => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout),
    };
    let Some(config) = config else {
        let fmt = tracing_subscriber::fmt()
            .with_env_filter(log_filter)
            .with_writer(writer);
        let fmt = match ansi {
            Some(a) => fmt.with_ansi(a),
            None => fmt,
        };
        fmt.try_init().map_err(|e| InitError::Subscriber(e.to_string()))?;
        return Ok(Telemetry { provider: None });
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match ansi {
        Some(a) => fmt.with_ansi(a),
        None => fmt,
    };
    // The exporter's reqwest client is built with rustls but no bundled crypto provider (the
    // workspace's object_store client asks for that): without a process default provider its
    // builder panics. ring, as everywhere in cloudify.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(config.endpoint.clone())
        .build()
        .map_err(|e| InitError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let _ = SAMPLER.set(config.sampler.to_sdk());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(HeadIds::default())
        .with_sampler(config.sampler.to_sdk())
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("cloudify");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Per-span work is per-request work on the pass-through path (three spans a chunk), so
    // the layer records only what the spans say: no idle/busy timings, no source location
    // (`code.*`: three attributes a span) nor thread attributes (a thread-name allocation a
    // span), and no OpenTelemetry context activated on every enter (an enter is every poll of
    // an instrumented future; cloudify reads a span's context explicitly, see [`inject`]).
    // Measured with `examples/trace_timing.rs` under callgrind: these took a traced request
    // from +77 k to +57 k instructions.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_threads(false)
        .with_context_activation(false)
        .with_filter(ExportFilter);
    // The log layer sees events only, not spans: with traces off there are no request spans
    // for log lines to name, and formatting every request span's fields into the log layer's
    // span storage (which it does for each span it is enabled for, whether or not anything
    // is logged inside) measured ~1 % of a pass-through request's CPU.
    let logs = log_filter.and(tracing_subscriber::filter::filter_fn(|m| !m.is_span()));
    tracing_subscriber::registry()
        .with(fmt.with_filter(logs))
        .with(otel)
        .try_init()
        .map_err(|e| InitError::Subscriber(e.to_string()))?;
    ENABLED.store(true, Ordering::Relaxed);
    tracing::info!(
        endpoint = %config.endpoint,
        service = %config.service_name,
        "OpenTelemetry: exporting traces over OTLP/HTTP"
    );
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Headers as the propagator's carrier (read side).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Headers as the propagator's carrier (write side).
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Writes the current span's W3C `traceparent` (and `tracestate`) into `headers` of an outgoing
/// request, so the callee's spans join this trace. Nothing when traces are off.
pub fn inject(headers: &mut http::HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// The current span's `traceparent` header value, for callers that build requests without an
/// `http::HeaderMap` (a subprocess's environment, a client with its own header type).
pub fn traceparent() -> Option<String> {
    let mut h = http::HeaderMap::new();
    inject(&mut h);
    h.get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Option<Config>, ConfigError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        Config::from_vars(|k| m.get(k).cloned(), "cloudify-serve")
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(parse(&[("OTEL_SERVICE_NAME", "x")]).unwrap(), None);
        // empty means unset (a chart that leaves the value blank)
        assert_eq!(parse(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]).unwrap(), None);
        // an exporter named without an endpoint is still off (no localhost default)
        assert_eq!(parse(&[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap(), None);
    }

    #[test]
    fn base_endpoint_gets_the_signal_path() {
        let c = parse(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(c.service_name, "cloudify-serve");
        assert_eq!(
            c.sampler,
            SamplerConfig::ParentBased(Box::new(SamplerConfig::AlwaysOn))
        );
        let c = parse(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c.example/otlp")])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "https://c.example/otlp/v1/traces");
    }

    #[test]
    fn traces_endpoint_is_used_as_given_and_wins() {
        let c = parse(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:9999/custom"),
            ("OTEL_SERVICE_NAME", "my-server"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "http://b:9999/custom");
        assert_eq!(c.service_name, "my-server");
    }

    #[test]
    fn disabled_and_none_win_over_an_endpoint() {
        let e = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318");
        assert_eq!(parse(&[e, ("OTEL_SDK_DISABLED", "true")]).unwrap(), None);
        assert_eq!(parse(&[e, ("OTEL_SDK_DISABLED", "TRUE")]).unwrap(), None);
        assert!(parse(&[e, ("OTEL_SDK_DISABLED", "false")]).unwrap().is_some());
        assert_eq!(parse(&[e, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(), None);
        assert!(parse(&[e, ("OTEL_TRACES_EXPORTER", "otlp")]).unwrap().is_some());
    }

    #[test]
    fn samplers() {
        let e = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318");
        let s = |vars: &[(&str, &str)]| {
            let mut v = vars.to_vec();
            v.push(e);
            parse(&v).unwrap().unwrap().sampler
        };
        assert_eq!(
            s(&[("OTEL_TRACES_SAMPLER", "always_on")]),
            SamplerConfig::AlwaysOn
        );
        assert_eq!(
            s(&[("OTEL_TRACES_SAMPLER", "always_off")]),
            SamplerConfig::AlwaysOff
        );
        assert_eq!(
            s(&[("OTEL_TRACES_SAMPLER", "traceidratio")]),
            SamplerConfig::TraceIdRatio(1.0)
        );
        assert_eq!(
            s(&[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25")
            ]),
            SamplerConfig::ParentBased(Box::new(SamplerConfig::TraceIdRatio(0.25)))
        );
        assert_eq!(
            s(&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")]),
            SamplerConfig::ParentBased(Box::new(SamplerConfig::AlwaysOff))
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318");
        let err = |vars: &[(&str, &str)]| parse(vars).unwrap_err().to_string();
        let m = err(&[e, ("OTEL_TRACES_SAMPLER", "sometimes")]);
        assert!(m.starts_with("OTEL_TRACES_SAMPLER=\"sometimes\""), "{m}");
        let m = err(&[
            e,
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ]);
        assert!(
            m.contains("OTEL_TRACES_SAMPLER_ARG") && m.contains("between 0 and 1"),
            "{m}"
        );
        let m = err(&[
            e,
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "half"),
        ]);
        assert!(m.contains("OTEL_TRACES_SAMPLER_ARG"), "{m}");
        let m = err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]);
        assert!(
            m.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && m.contains("http://"),
            "{m}"
        );
        let m = err(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http:///v1/traces")]);
        assert!(m.contains("names no host"), "{m}");
        let m = err(&[e, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert!(m.contains("http/protobuf"), "{m}");
        let m = err(&[e, ("OTEL_TRACES_EXPORTER", "zipkin")]);
        assert!(m.contains("'zipkin'"), "{m}");
        let m = err(&[e, ("OTEL_SDK_DISABLED", "yes")]);
        assert!(m.contains("OTEL_SDK_DISABLED"), "{m}");
        // the per-signal protocol is checked first, and a right one stops the search
        assert!(
            parse(&[
                e,
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            ])
            .unwrap()
            .is_some()
        );
    }

    #[test]
    fn helpers_do_nothing_when_off() {
        let mut h = http::HeaderMap::new();
        inject(&mut h);
        assert!(h.is_empty());
        assert_eq!(traceparent(), None);
        h.insert(
            "traceparent",
            http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert!(head_sample(&h).is_none());
    }

    fn caller(flags: &'static str) -> opentelemetry::Context {
        let mut h = http::HeaderMap::new();
        let v = match flags {
            "01" => "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            _ => "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        };
        h.insert("traceparent", http::HeaderValue::from_static(v));
        use opentelemetry::propagation::TextMapPropagator;
        TraceContextPropagator::new().extract(&HeaderExtractor(&h))
    }

    #[test]
    fn head_sampling_follows_the_sampler_and_the_callers_flag() {
        assert!(decide(&Sampler::AlwaysOff, opentelemetry::Context::new()).is_none());
        let root = decide(&Sampler::AlwaysOn, opentelemetry::Context::new()).expect("sampled");
        assert!(root.parent.is_none());
        let pb = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
        assert!(
            decide(&pb, caller("00")).is_none(),
            "an unsampled caller is followed"
        );
        let h = decide(&pb, caller("01")).expect("a sampled caller is followed");
        assert!(h.parent.is_some());
        assert_eq!(format!("{:032x}", h.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_ratio_is_decided_on_the_trace_id_the_root_span_gets() {
        let half = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.5)));
        let sdk = Sampler::TraceIdRatioBased(0.5);
        let mut kept = 0;
        for _ in 0..2000 {
            if let Some(h) = decide(&half, opentelemetry::Context::new()) {
                kept += 1;
                // the SDK, asked again with the id the span will get, decides the same
                let again = sdk.should_sample(None, h.trace_id, "request", &SpanKind::Server, &[], &[]);
                assert_eq!(again.decision, SamplingDecision::RecordAndSample);
            }
        }
        assert!((850..=1150).contains(&kept), "{kept} of 2000 kept at 0.5");
    }

    #[test]
    fn the_id_generator_hands_out_the_chosen_trace_id_once() {
        let ids = HeadIds::default();
        let chosen = TraceId::from(0x42u128);
        NEXT_TRACE_ID.set(Some(chosen));
        assert_eq!(ids.new_trace_id(), chosen);
        assert_ne!(ids.new_trace_id(), chosen);
    }

    #[test]
    fn suppression_holds_while_polled_and_is_carried_only_when_on() {
        let mut fut = Box::pin(suppressed(async { SUPPRESSED.get() }));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert_eq!(fut.as_mut().poll(&mut cx), std::task::Poll::Ready(true));
        assert!(!SUPPRESSED.get(), "restored after the poll");
        // traces off: nothing is carried, even inside a suppressed scope
        let _g = SuppressGuard::on();
        assert!(!traced_span().suppressed);
        let carried = Carry {
            span: tracing::Span::none(),
            suppressed: true,
        };
        drop(_g);
        assert!(carried.in_scope(|| SUPPRESSED.get()));
        assert!(!SUPPRESSED.get());
    }
}
