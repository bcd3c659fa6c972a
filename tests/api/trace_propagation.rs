//! Distributed tracing: a W3C `traceparent` sent with `POST /orders` reaches
//! every Kafka message of the order's saga, and, with an OTLP endpoint
//! configured, every service's spans of the order arrive at the collector
//! as one connected trace, and the JSON logs carry the trace and order ids.

use crate::helpers::{admin_client, admin_token, free_port, postgres_base, spawn_app, JWT_SECRET};
use futures::StreamExt;
use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};
use shop_actors::events::Envelope;
use shop_actors::kafka::KafkaSettings;
use shop_actors::trace::TraceParent;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(10);
/// The client's context: a trace and the client's own span.
const CLIENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
/// Messages of a confirmed order: OrderCreated, ReserveInventory,
/// InventoryReserved, OrderStatusChanged, AuthorizePayment,
/// PaymentAuthorized, OrderStatusChanged, OrderConfirmed.
const CONFIRMED_MESSAGES: usize = 8;

/// One message of an order as read from Kafka.
#[derive(Debug)]
struct Read {
    topic: String,
    event_type: String,
    traceparent: Option<String>,
}

/// Every message on the saga's topics keyed by one of `orders`, by order.
fn read_orders(kafka: &KafkaSettings, orders: &[Uuid]) -> HashMap<Uuid, Vec<Read>> {
    let (consumer, mut remaining) = crate::helpers::read_every_topic(kafka, "trace-test-reader");
    let mut found: HashMap<Uuid, Vec<Read>> = HashMap::new();
    while remaining > 0 {
        let message = consumer
            .poll(TIMEOUT)
            .expect("message before timeout")
            .unwrap();
        remaining -= 1;
        let key: Uuid = std::str::from_utf8(message.key().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        if !orders.contains(&key) {
            continue;
        }
        let envelope = Envelope::decode(message.payload().unwrap()).unwrap();
        let traceparent = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == "traceparent")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        });
        found.entry(key).or_default().push(Read {
            topic: message.topic().to_owned(),
            event_type: envelope.event.type_name().to_owned(),
            traceparent,
        });
    }
    found
}

/// Waits until every order in `orders` has all its messages on Kafka.
async fn wait_for_messages(kafka: &KafkaSettings, orders: &[Uuid]) -> HashMap<Uuid, Vec<Read>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (kafka, wanted) = (kafka.clone(), orders.to_vec());
        let found = tokio::task::spawn_blocking(move || read_orders(&kafka, &wanted))
            .await
            .unwrap();
        let complete = orders
            .iter()
            .all(|o| found.get(o).map_or(0, Vec::len) >= CONFIRMED_MESSAGES);
        if complete {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "messages missing: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The trace contexts of `messages`, checking each has one.
fn contexts(messages: &[Read]) -> Vec<TraceParent> {
    messages
        .iter()
        .map(|m| {
            let header = m
                .traceparent
                .as_deref()
                .unwrap_or_else(|| panic!("no traceparent on {m:?}"));
            TraceParent::parse(header).unwrap_or_else(|e| panic!("{header}: {e}"))
        })
        .collect()
}

#[tokio::test]
async fn the_callers_traceparent_reaches_every_message_of_the_saga() {
    let app = spawn_app().await;
    let product = app.create_product(10).await;
    let body = json!({
        "customer_id": "tracy",
        "items": [{"product_id": product, "quantity": 1}],
    });
    let traced = app
        .http
        .post(format!("{}/orders", app.order_url))
        .header("traceparent", CLIENT)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), 202);
    let traced: Uuid = traced.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // Without a header, the request starts a trace of its own.
    let untraced = app.order(product, 1, "tok_visa").await;
    for order in [traced, untraced] {
        assert_eq!(app.wait_terminal(order).await["status"], "CONFIRMED");
    }

    let found = wait_for_messages(&app.kafka_settings(), &[traced, untraced]).await;

    let client = TraceParent::parse(CLIENT).unwrap();
    let messages = &found[&traced];
    let types: HashSet<&str> = messages.iter().map(|m| m.event_type.as_str()).collect();
    for expected in [
        "OrderCreated",
        "ReserveInventory",
        "InventoryReserved",
        "AuthorizePayment",
        "PaymentAuthorized",
        "OrderStatusChanged",
        "OrderConfirmed",
    ] {
        assert!(types.contains(expected), "{expected} missing: {messages:?}");
    }
    let traced_contexts = contexts(messages);
    for (message, context) in messages.iter().zip(&traced_contexts) {
        assert_eq!(
            context.trace_id, client.trace_id,
            "{message:?} is not in the caller's trace"
        );
        assert_ne!(
            context.parent_id, client.parent_id,
            "{message:?}: a span of ours, not the caller's, is its parent"
        );
        assert_eq!(context.flags, 1, "{message:?}: sampled, like the caller");
    }
    let parents: HashSet<u64> = traced_contexts.iter().map(|c| c.parent_id).collect();
    assert_eq!(
        parents.len(),
        messages.len(),
        "each message is published under a span of its own: {messages:?}"
    );
    let topics_seen: HashSet<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics_seen.len(), 5, "all five saga topics");

    let untraced_contexts = contexts(&found[&untraced]);
    let trace_ids: HashSet<u128> = untraced_contexts.iter().map(|c| c.trace_id).collect();
    assert_eq!(trace_ids.len(), 1, "one new trace for the whole saga");
    assert!(!trace_ids.contains(&client.trace_id));
    app.teardown().await;
}

/// A fake OTLP/HTTP collector: keeps every JSON export request.
async fn fake_collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    use warp::Filter;
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = received.clone();
    let route = warp::path!("v1" / "traces")
        .and(warp::post())
        .and(warp::body::json())
        .map(move |body: Value| {
            store.lock().unwrap().push(body);
            warp::reply::json(&json!({}))
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (format!("http://{address}"), received)
}

/// An exported span, as much of it as the test looks at.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    span_id: String,
    parent_span_id: String,
    service: Option<String>,
}

/// The spans of trace `trace_id` in `exports` (OTLP/JSON requests).
fn spans_of(exports: &[Value], trace_id: &str) -> Vec<Exported> {
    let mut spans = Vec::new();
    for export in exports {
        for resource in export["resourceSpans"].as_array().into_iter().flatten() {
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    if span["traceId"].as_str() != Some(trace_id) {
                        continue;
                    }
                    let service = span["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "service")
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .map(str::to_owned);
                    spans.push(Exported {
                        name: span["name"].as_str().unwrap_or_default().to_owned(),
                        span_id: span["spanId"].as_str().unwrap_or_default().to_owned(),
                        parent_span_id: span["parentSpanId"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        service,
                    });
                }
            }
        }
    }
    spans
}

/// Runs the real binary (`shop all`) with an OTLP endpoint, so export,
/// the flush on SIGTERM and the JSON log lines are what production does.
#[tokio::test]
async fn with_an_otlp_endpoint_the_order_is_one_trace_across_every_service() {
    let (endpoint, received) = fake_collector().await;
    let db_name = format!("shop_test_{}", Uuid::new_v4().simple());
    let postgres = postgres_base();
    let (order_port, product_port, payment_port, gateway_port) =
        (free_port(), free_port(), free_port(), free_port());
    let log_path = std::env::temp_dir().join(format!("{db_name}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut shop = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .arg("all")
        .env_remove("KAFKA_BROKERS")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_SERVICE_NAME", "shop-trace-test")
        .env("JWT_SECRET", JWT_SECRET)
        .env("DATABASE_URL", format!("{postgres}/{db_name}"))
        .env("DATABASE_POOL_SIZE", "8")
        .env("REDIS_PREFIX", &db_name)
        .env("HTTP_HOST", "127.0.0.1")
        .env("ORDER_PORT", order_port.to_string())
        .env("PRODUCT_PORT", product_port.to_string())
        .env("PAYMENT_PORT", payment_port.to_string())
        .env("GATEWAY_PORT", gateway_port.to_string())
        .env("KAFKA_PARTITIONS", "3")
        .env("PAYMENT_LATENCY_MS", "0")
        .env("OUTBOX_POLL_MS", "20")
        .env("SHUTDOWN_GRACE_SECONDS", "5")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("shop starts");
    let http = admin_client();
    let order_url = format!("http://127.0.0.1:{order_port}");
    let started = tokio::time::Instant::now();
    // The services start one after the other: wait for all four.
    for port in [product_port, payment_port, order_port, gateway_port] {
        loop {
            let ready = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "shop never became ready on {port}; see {}",
                log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://127.0.0.1:{gateway_port}/ws"
        ))
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", admin_token()).parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket connects");
    futures::SinkExt::send(
        &mut socket,
        tokio_tungstenite::tungstenite::Message::text(r#"{"type":"subscribe","scope":"all"}"#),
    )
    .await
    .unwrap();
    // Wait until the subscription is active.
    while let Some(Ok(frame)) = socket.next().await {
        if frame
            .to_text()
            .is_ok_and(|t| t.contains(r#""type":"subscribed""#))
        {
            break;
        }
    }

    let placed = http
        .post(format!("{order_url}/orders"))
        .header("traceparent", CLIENT)
        .json(&json!({
            "customer_id": "tracy",
            "items": [{"product_id": "00000000-0000-4000-8000-000000000001", "quantity": 1}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 202);
    let order_id = placed.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The push of CONFIRMED is the trace's last span.
    let confirmed = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(frame)) = socket.next().await {
            let Ok(text) = frame.into_text() else {
                continue;
            };
            let update: Value = serde_json::from_str(&text).unwrap_or_default();
            if update["order_id"] == order_id.as_str() && update["status"] == "CONFIRMED" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(confirmed, Ok(true), "CONFIRMED pushed");
    drop(socket);

    // SIGTERM: the process flushes its spans on the way out.
    let pid = shop.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), shop.wait())
        .await
        .expect("shop exits on SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit}");

    let exports = received.lock().unwrap().clone();
    let trace_id = TraceParent::parse(CLIENT).unwrap().trace_id_hex();
    let spans = spans_of(&exports, &trace_id);
    let names: HashSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "POST order",
        "GET product",
        "ReserveInventory process",
        "InventoryReserved process",
        "AuthorizePayment process",
        "PaymentAuthorized process",
        "inventory-commands publish",
        "order-events publish",
        "websocket push",
    ] {
        assert!(
            names.contains(expected),
            "no {expected:?} span in {names:?}"
        );
    }
    let services: HashSet<&str> = spans.iter().filter_map(|s| s.service.as_deref()).collect();
    for service in ["order", "product", "payment", "gateway"] {
        assert!(
            services.contains(service),
            "no span of {service}: {services:?}"
        );
    }
    // One connected tree: every span's parent is the caller's span or
    // another span of the trace.
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let client_span = "b7ad6b7169203331";
    for span in &spans {
        assert!(
            span.parent_span_id == client_span || ids.contains(span.parent_span_id.as_str()),
            "{span:?} hangs outside the trace"
        );
    }
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.parent_span_id == client_span)
            .count(),
        1,
        "only the request span is the caller's child"
    );

    // JSON log lines inside the order's work carry its trace and order ids.
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &Value| line["trace_id"] == trace_id.as_str())
        .collect();
    let messages: HashSet<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
    assert!(messages.contains("order placed"), "{messages:?}");
    assert!(messages.contains("order advanced"), "{messages:?}");
    for line in &lines {
        if line["message"] == "order advanced" {
            assert_eq!(line["order_id"], order_id.as_str(), "{line}");
        }
    }

    let _ = std::fs::remove_file(&log_path);
    let _ = shop_actors::db::drop_database(&format!("{postgres}/{db_name}")).await;
}
