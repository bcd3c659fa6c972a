//! Logging and tracing, set up once per process: `RUST_LOG` filters,
//! `LOG_FORMAT` picks human-readable or JSON lines. librdkafka's own logs
//! arrive through the `log` bridge and are quiet unless they matter.
//!
//! Every span gets an OpenTelemetry trace context (see
//! [`shop_actors::trace`]), so `traceparent` propagation and the `trace_id`
//! in log lines work whether or not anything is exported. Spans are
//! exported (OTLP over HTTP, JSON encoding) only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set; `OTEL_SERVICE_NAME` names the process (default `shop`).

use crate::config::LogFormat;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::fmt;
use std::sync::Once;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Where spans are exported; unset means nowhere.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// Set up once: tests call [`init`] once per test.
static INIT: Once = Once::new();

/// The process's tracer provider, kept to flush spans on the way out.
#[must_use = "call shutdown() before exiting, or queued spans are lost"]
pub struct Telemetry {
    /// `None` when nothing is exported (or another call set things up).
    exporting: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still queued and stops the exporter. Blocking work,
    /// so it runs off the async workers.
    pub async fn shutdown(self) {
        let Some(provider) = self.exporting else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = flushed {
            eprintln!("spans not all exported on exit: {error}");
        }
    }
}

/// Installs the global subscriber; later calls do nothing (tests call it
/// once per test).
pub fn init(format: LogFormat) -> Telemetry {
    init_with_default_filter(format, DEFAULT_FILTER)
}

/// What is logged when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,rdkafka=warn,librdkafka=warn,warp=warn,hyper=warn";

/// [`init`] with another filter for when `RUST_LOG` is unset: `shop loadgen`
/// logs only warnings by default, since an embedded platform's per-order
/// lines would cost CPU and bury the progress display.
pub fn init_with_default_filter(format: LogFormat, default_filter: &str) -> Telemetry {
    let mut telemetry = Telemetry { exporting: None };
    INIT.call_once(|| telemetry = install(format, default_filter));
    telemetry
}

fn install(format: LogFormat, default_filter: &str) -> Telemetry {
    let endpoint_set = ENDPOINT_VARS
        .iter()
        .any(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()));
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("shop");
    }
    let mut provider = SdkTracerProvider::builder().with_resource(resource.build());
    let mut export_error = None;
    if endpoint_set {
        use opentelemetry_otlp::{Protocol, WithExportConfig};
        // The exporter reads the endpoint (adding `/v1/traces`), headers and
        // timeout from the standard OTEL_EXPORTER_OTLP_* variables.
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .build()
        {
            Ok(exporter) => provider = provider.with_batch_exporter(exporter),
            Err(error) => export_error = Some(error),
        }
    }
    let exporting = endpoint_set && export_error.is_none();
    let provider = provider.build();
    // Our spans always get trace contexts (what propagation needs); our
    // log events go to the exporter too when there is one.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("shop"))
        .with_filter(filter_fn(move |meta| {
            ours(meta) && (meta.is_span() || exporting)
        }));
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Our spans are logged whatever RUST_LOG says, so that a line that is
    // logged always shows the trace and order it belongs to.
    let logged = env.or(filter_fn(|meta| meta.is_span() && ours(meta)));
    // Logs go to stderr, so command output on stdout (`shop broker`,
    // `shop dlq list --json`) stays machine-readable.
    let (text, json) = match format {
        LogFormat::Text => (
            Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .map_event_format(WithTraceFields)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    let fmt = text
        .map(|layer| layer.boxed())
        .or(json.map(|layer| layer.boxed()))
        .map(|layer| layer.with_filter(logged));
    let installed = tracing_subscriber::registry()
        .with(SpanFields)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(error) = export_error {
        tracing::warn!(%error, "OTLP exporter not built; spans are not exported");
    }
    Telemetry {
        exporting: (installed && exporting).then_some(provider),
    }
}

/// Spans and events of shop's own crates (`shop`, `shop_actors`) at info
/// or above.
fn ours(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with("shop") && *meta.level() <= Level::INFO
}

/// The `trace_id` and `order_id` fields of a span, kept so that the JSON
/// format can put them at the top level of every line logged inside it.
#[derive(Debug, Default, Clone)]
struct LogContext {
    trace_id: Option<String>,
    order_id: Option<String>,
}

impl LogContext {
    fn is_empty(&self) -> bool {
        self.trace_id.is_none() && self.order_id.is_none()
    }

    /// Takes from `inner` (a span nearer the event) what this lacks.
    fn fill_from(&mut self, outer: &LogContext) {
        if self.trace_id.is_none() {
            self.trace_id.clone_from(&outer.trace_id);
        }
        if self.order_id.is_none() {
            self.order_id.clone_from(&outer.order_id);
        }
    }
}

impl Visit for LogContext {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace_id" => self.trace_id = Some(value.to_owned()),
            "order_id" => self.order_id = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here, formatted as their Display.
        match field.name() {
            "trace_id" => self.trace_id = Some(format!("{value:?}")),
            "order_id" => self.order_id = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

/// Records [`LogContext`] in each span's extensions as its fields are set.
struct SpanFields;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanFields {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = LogContext::default();
        attrs.record(&mut fields);
        if let (false, Some(span)) = (fields.is_empty(), ctx.span(id)) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<LogContext>() {
            Some(fields) => values.record(fields),
            None => {
                let mut fields = LogContext::default();
                values.record(&mut fields);
                if !fields.is_empty() {
                    extensions.insert(fields);
                }
            }
        }
    }
}

/// The JSON format, plus top-level `trace_id` and `order_id` taken from the
/// spans the event is in (an event's own `order_id` wins), so a log search
/// by either finds every line of a request or a saga step.
struct WithTraceFields(Format<Json>);

impl<S> FormatEvent<S, JsonFields> for WithTraceFields
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let mut own = LogContext::default();
        event.record(&mut own);
        let mut found = LogContext::default();
        for span in ctx.event_scope().into_iter().flatten() {
            if let Some(fields) = span.extensions().get::<LogContext>() {
                found.fill_from(fields);
            }
        }
        let mut extra = String::new();
        for (name, value, already) in [
            ("trace_id", &found.trace_id, &own.trace_id),
            ("order_id", &found.order_id, &own.order_id),
        ] {
            if let (Some(value), None) = (value, already) {
                extra.push_str(&format!(",\"{name}\":"));
                extra.push_str(&serde_json::Value::from(value.as_str()).to_string());
            }
        }
        match line.trim_end().strip_suffix('}') {
            Some(object) if !extra.is_empty() => writeln!(writer, "{object}{extra}}}"),
            _ => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what the JSON layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn json_lines(work: impl FnOnce()) -> Vec<serde_json::Value> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry().with(SpanFields).with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .map_event_format(WithTraceFields)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, work);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn json_lines_carry_the_trace_and_order_of_their_spans() {
        let lines = json_lines(|| {
            let outer = tracing::info_span!(
                "process",
                order_id = "o-1",
                trace_id = tracing::field::Empty
            );
            outer.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            let _outer = outer.enter();
            let inner = tracing::info_span!("step");
            let _inner = inner.enter();
            tracing::info!(answer = 42, "inside");
            tracing::info!(order_id = "o-2", "names its own order");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(lines[0]["order_id"], "o-1");
        assert_eq!(lines[0]["answer"], 42);
        assert_eq!(lines[0]["message"], "inside");
        assert_eq!(lines[1]["order_id"], "o-2", "the event's own field wins");
        assert_eq!(lines[1]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn json_lines_outside_any_span_are_unchanged() {
        let lines = json_lines(|| tracing::info!("alone"));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["message"], "alone");
        assert!(lines[0].get("trace_id").is_none());
    }
}
