//! The process's Prometheus metrics: one registry per process (every
//! service in it reports there), served at `GET /metrics` by each service's
//! HTTP server in the OpenMetrics text format, which Prometheus scrapes.
//!
//! Label values are bounded: routes are the documented templates (the HTTP
//! layer folds every other path into `unmatched`), methods outside the
//! standard ones are `OTHER`, statuses and reasons come from closed sets,
//! partitions from the topics.

use crate::events::OrderStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::Duration;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The service that answered.
    pub service: String,
    /// The HTTP method.
    pub method: String,
    /// The route, with ids replaced by `{id}`.
    pub route: String,
    /// The response status code.
    pub status: u16,
}

/// Labels of an HTTP request's duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The service that answered.
    pub service: String,
    /// The HTTP method.
    pub method: String,
    /// The route, with ids replaced by `{id}`.
    pub route: String,
}

/// Labels of a finished saga.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// CONFIRMED, REJECTED or FAILED.
    pub status: String,
    /// Why, for REJECTED and FAILED; empty otherwise.
    pub reason: String,
}

/// Labels of a gateway order lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// Where the answer came from: `redis` or `order_service`.
    pub source: String,
}

/// Labels of a saga step.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// The status the order was in while the step ran.
    pub step: String,
}

/// Labels of one service's outbox.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SchemaLabels {
    /// The service's schema.
    pub schema: &'static str,
}

/// Labels of one partition a consumer group reads.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// The consumer group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

/// Labels of dead-lettered messages.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    /// The consumer group that gave up on them.
    pub group: String,
    /// Where they came from.
    pub topic: String,
}

type Seconds = Family<RouteLabels, Histogram, fn() -> Histogram>;
type StepSeconds = Family<StepLabels, Histogram, fn() -> Histogram>;

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered.
    pub http_requests: Family<HttpLabels, Counter>,
    /// HTTP request durations.
    pub http_seconds: Seconds,
    /// Sagas finished, by outcome (FAILED ones need an operator).
    pub saga_outcomes: Family<OutcomeLabels, Counter>,
    /// Time an order spent in each step.
    pub saga_step_seconds: StepSeconds,
    /// Time from order creation to its final status.
    pub saga_seconds: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    /// Saga actors running in this process.
    pub sagas_running: Gauge,
    /// Rows waiting in each outbox.
    pub outbox_backlog: Family<SchemaLabels, Gauge>,
    /// Age of the oldest row waiting in each outbox.
    pub outbox_age_seconds: Family<SchemaLabels, Gauge<f64, AtomicU64>>,
    /// Messages not yet consumed, per group and partition.
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    /// Open WebSocket connections.
    pub websocket_connections: Gauge,
    /// Messages sent to the dead-letter topic by this process.
    pub dead_letters: Family<DeadLetterLabels, Counter>,
    /// Orders looked up for WebSocket subscribers, by where the answer came from.
    pub order_lookups: Family<SourceLabels, Counter>,
    /// Messages on the dead-letter topic (replayed ones included).
    pub dead_letter_topic_messages: Gauge,
}

fn latency_buckets() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("shop");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered",
            http_requests.clone(),
        );
        let http_seconds: Seconds = Family::new_with_constructor(latency_buckets);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request durations",
            http_seconds.clone(),
        );
        let saga_outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "saga_outcomes",
            "Sagas finished, by final status and reason; FAILED needs an operator",
            saga_outcomes.clone(),
        );
        let saga_step_seconds: StepSeconds = Family::new_with_constructor(latency_buckets);
        registry.register(
            "saga_step_duration_seconds",
            "Time an order spent in a saga step, by the status it was in",
            saga_step_seconds.clone(),
        );
        let saga_seconds = Family::new_with_constructor(latency_buckets as fn() -> Histogram);
        registry.register(
            "saga_duration_seconds",
            "Time from order creation to its final status",
            saga_seconds.clone(),
        );
        let sagas_running = Gauge::default();
        registry.register(
            "sagas_running",
            "Saga actors running in this process",
            sagas_running.clone(),
        );
        let outbox_backlog = Family::<SchemaLabels, Gauge>::default();
        registry.register(
            "outbox_backlog",
            "Rows waiting in the outbox",
            outbox_backlog.clone(),
        );
        let outbox_age_seconds = Family::<SchemaLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest row waiting in the outbox",
            outbox_age_seconds.clone(),
        );
        let consumer_lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "kafka_consumer_lag",
            "Messages not yet consumed, per consumer group and partition",
            consumer_lag.clone(),
        );
        let websocket_connections = Gauge::default();
        registry.register(
            "websocket_connections",
            "Open WebSocket connections",
            websocket_connections.clone(),
        );
        let order_lookups = Family::<SourceLabels, Counter>::default();
        registry.register(
            "gateway_order_lookups",
            "Orders looked up for WebSocket subscribers, from the gateway's Redis copy or the order service",
            order_lookups.clone(),
        );
        let dead_letters = Family::<DeadLetterLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Messages this process sent to the dead-letter topic",
            dead_letters.clone(),
        );
        let dead_letter_topic_messages = Gauge::default();
        registry.register(
            "dead_letter_topic_messages",
            "Messages on the dead-letter topic, replayed ones included (see shop dlq list)",
            dead_letter_topic_messages.clone(),
        );
        Self {
            registry,
            dead_letter_topic_messages,
            http_requests,
            http_seconds,
            saga_outcomes,
            saga_step_seconds,
            saga_seconds,
            sagas_running,
            outbox_backlog,
            outbox_age_seconds,
            consumer_lag,
            websocket_connections,
            dead_letters,
            order_lookups,
        }
    }

    /// Every metric, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Records one answered HTTP request. `route` is the template the
    /// request matched (`/orders/{id}`), or one value for all unmatched
    /// paths: the caller bounds it, as this registry keeps every label
    /// value it is given. Methods outside HTTP's standard ones count as
    /// `OTHER`, for the same reason.
    pub fn http_request(
        &self,
        service: &str,
        method: &str,
        route: &str,
        status: u16,
        took: Duration,
    ) {
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE"
            | "PATCH" => method,
            _ => "OTHER",
        };
        let route = route.to_owned();
        self.http_seconds
            .get_or_create(&RouteLabels {
                service: service.to_owned(),
                method: method.to_owned(),
                route: route.clone(),
            })
            .observe(took.as_secs_f64());
        self.http_requests
            .get_or_create(&HttpLabels {
                service: service.to_owned(),
                method: method.to_owned(),
                route,
                status,
            })
            .inc();
    }

    /// Records a saga that reached a final status, `took` after the order
    /// was created.
    pub fn saga_finished(&self, status: OrderStatus, reason: Option<&str>, took: Duration) {
        let labels = OutcomeLabels {
            status: status.to_string(),
            reason: reason.unwrap_or_default().to_owned(),
        };
        self.saga_outcomes.get_or_create(&labels).inc();
        self.saga_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Records the time an order spent in `step`.
    pub fn saga_step(&self, step: OrderStatus, took: Duration) {
        self.saga_step_seconds
            .get_or_create(&StepLabels {
                step: step.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_metrics_name_each_family_and_count_outcomes() {
        let metrics = Metrics::new();
        metrics.saga_finished(
            OrderStatus::Failed,
            Some("PAYMENT_DECLINED"),
            Duration::from_millis(1500),
        );
        metrics.http_request(
            "order",
            "GET",
            "/orders/{id}",
            404,
            Duration::from_millis(3),
        );
        metrics.http_request("order", "X1", "unmatched", 404, Duration::from_millis(1));
        let text = metrics.encode();
        assert!(
            text.contains(
                "shop_saga_outcomes_total{status=\"FAILED\",reason=\"PAYMENT_DECLINED\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("shop_http_requests_total{service=\"order\",method=\"GET\",route=\"/orders/{id}\",status=\"404\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("shop_http_requests_total{service=\"order\",method=\"OTHER\",route=\"unmatched\",status=\"404\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE shop_http_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
