//! Distributed tracing: the W3C `traceparent` that ties one order's work in
//! every service into one trace.
//!
//! The context enters with an HTTP request (its `traceparent` header, or a
//! new trace), is stored with each outbox row, travels as the Kafka header
//! [`HEADER`], and is adopted by the span in which a consumer handles the
//! message. Whatever that span writes to its outbox carries the span's own
//! context onward, so the whole saga is one trace.
//!
//! Spans are `tracing` spans; the `tracing-opentelemetry` layer installed by
//! the binary gives them OpenTelemetry ids (and exports them when an OTLP
//! endpoint is configured). Without that layer nothing here fails: there is
//! simply no context to carry.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use std::fmt;
use std::str::FromStr;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The HTTP and Kafka header that carries the context.
pub const HEADER: &str = "traceparent";

/// A W3C trace context: which trace, and which span is the parent of the
/// receiver's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace; never zero.
    pub trace_id: u128,
    /// The span that sent the message or request; never zero.
    pub parent_id: u64,
    /// Trace flags; bit 0 says the sender recorded (sampled) its span.
    pub flags: u8,
}

/// Why a `traceparent` value was refused. A receiver that gets one starts a
/// new trace instead, as the W3C recommendation says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not `version-traceid-parentid-flags` in lowercase hex of the right lengths.
    #[error("traceparent is not version-traceid-parentid-flags in lowercase hex")]
    Malformed,
    /// Version `ff` is forbidden.
    #[error("traceparent version ff is invalid")]
    InvalidVersion,
    /// An all-zero trace id or parent id means "no context".
    #[error("traceparent has an all-zero trace id or parent id")]
    ZeroId,
}

impl TraceParent {
    /// Parses a `traceparent` value. Version `00` must be exactly four
    /// fields; a later version may append fields, which are ignored.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let mut fields = value.trim().split('-');
        let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(ParseError::Malformed);
        };
        let version = hex(version, 2).ok_or(ParseError::Malformed)?;
        if version == 0xff {
            return Err(ParseError::InvalidVersion);
        }
        if version == 0 && fields.next().is_some() {
            return Err(ParseError::Malformed);
        }
        let trace_id = hex(trace_id, 32).ok_or(ParseError::Malformed)?;
        let parent_id = hex(parent_id, 16).ok_or(ParseError::Malformed)?;
        let flags = hex(flags, 2).ok_or(ParseError::Malformed)?;
        if trace_id == 0 || parent_id == 0 {
            return Err(ParseError::ZeroId);
        }
        Ok(Self {
            trace_id,
            parent_id: parent_id as u64,
            flags: flags as u8,
        })
    }

    /// The trace id as 32 lowercase hex digits, as logs and OTLP show it.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The context of `span`, if it has one (the OpenTelemetry layer is
    /// installed and the span is enabled).
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        if span.is_disabled() {
            return None;
        }
        let context = span.context();
        let span = context.span();
        let own = span.span_context();
        own.is_valid().then(|| Self {
            trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
            parent_id: u64::from_be_bytes(own.span_id().to_bytes()),
            flags: own.trace_flags().to_u8(),
        })
    }

    /// The context of the current span: what a message written now carries.
    pub fn current() -> Option<Self> {
        Self::of_span(&tracing::Span::current())
    }

    /// This context as an OpenTelemetry parent.
    fn context(&self) -> opentelemetry::Context {
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(self.trace_id),
            SpanId::from(self.parent_id),
            // Only the sampled bit is defined; the rest must not be passed on.
            TraceFlags::new(self.flags & 1),
            true,
            TraceState::default(),
        ))
    }
}

/// `len` lowercase hex digits (uppercase is invalid in `traceparent`).
fn hex(field: &str, len: usize) -> Option<u128> {
    let lowercase_hex = field
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if field.len() != len || !lowercase_hex {
        return None;
    }
    u128::from_str_radix(field, 16).ok()
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

impl FromStr for TraceParent {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

/// Makes `span` a child of `parent` (a remote context), or leaves it the
/// root of a new trace, and records its trace id in its `trace_id` field so
/// that every log line inside it carries it. Call it right after creating
/// the span, before entering it: a started span's parent cannot change.
pub fn adopt(span: &tracing::Span, parent: Option<&TraceParent>) {
    if let Some(parent) = parent {
        // Fails only without the OpenTelemetry layer, when there is nothing to adopt into.
        let _ = span.set_parent(parent.context());
    }
    if let Some(own) = TraceParent::of_span(span) {
        span.record("trace_id", tracing::field::display(own.trace_id_hex()));
    }
}

/// The span in which `service` handles one consumed message: a child of
/// the context the message arrived with. Messages written inside it carry
/// its context onward.
pub fn process_span(service: &'static str, envelope: &crate::events::Envelope) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "process",
        otel.name = %format_args!("{} process", envelope.event.type_name()),
        otel.kind = "consumer",
        service,
        order_id = %envelope.order_id,
        trace_id = tracing::field::Empty,
    );
    adopt(&span, envelope.trace.as_ref());
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_w3c_example() {
        let parsed = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parsed.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parsed.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.to_string(), EXAMPLE);
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(EXAMPLE.parse::<TraceParent>(), Ok(parsed));
    }

    #[test]
    fn formats_with_leading_zeros() {
        let small = TraceParent {
            trace_id: 1,
            parent_id: 2,
            flags: 0,
        };
        assert_eq!(
            small.to_string(),
            "00-00000000000000000000000000000001-0000000000000002-00"
        );
        assert_eq!(TraceParent::parse(&small.to_string()), Ok(small));
    }

    #[test]
    fn refuses_what_the_recommendation_refuses() {
        let refused = [
            ("", ParseError::Malformed),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                ParseError::Malformed,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                ParseError::Malformed,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                ParseError::Malformed,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
                ParseError::Malformed,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                ParseError::Malformed,
            ),
            (
                "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ParseError::Malformed,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                ParseError::Malformed,
            ),
            (
                "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ParseError::Malformed,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ParseError::InvalidVersion,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                ParseError::ZeroId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                ParseError::ZeroId,
            ),
        ];
        for (value, error) in refused {
            assert_eq!(TraceParent::parse(value), Err(error), "{value:?}");
        }
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let parsed =
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-next")
                .unwrap();
        assert_eq!(parsed.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parsed.to_string(), EXAMPLE, "we write the version we speak");
    }

    /// Runs `work` with the OpenTelemetry layer installed, as the binary does.
    fn with_layer(work: impl FnOnce()) {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, work);
    }

    #[test]
    fn an_adopted_span_continues_the_trace_under_a_span_id_of_its_own() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        with_layer(|| {
            let span = tracing::info_span!("work", trace_id = tracing::field::Empty);
            adopt(&span, Some(&parent));
            let own = TraceParent::of_span(&span).unwrap();
            assert_eq!(own.trace_id, parent.trace_id);
            assert_ne!(own.parent_id, parent.parent_id);
            assert_eq!(own.flags, 1, "sampled, like its parent");
            let _entered = span.enter();
            assert_eq!(TraceParent::current(), Some(own));
        });
    }

    #[test]
    fn a_span_without_a_parent_starts_a_new_trace() {
        with_layer(|| {
            let first = tracing::info_span!("first", trace_id = tracing::field::Empty);
            let second = tracing::info_span!("second", trace_id = tracing::field::Empty);
            adopt(&first, None);
            adopt(&second, None);
            let (first, second) = (
                TraceParent::of_span(&first).unwrap(),
                TraceParent::of_span(&second).unwrap(),
            );
            assert_ne!(first.trace_id, second.trace_id);
        });
    }

    #[test]
    fn without_the_opentelemetry_layer_there_is_no_context() {
        let span = tracing::info_span!("work", trace_id = tracing::field::Empty);
        adopt(&span, Some(&TraceParent::parse(EXAMPLE).unwrap()));
        assert_eq!(TraceParent::of_span(&span), None);
        assert_eq!(TraceParent::current(), None);
    }
}
