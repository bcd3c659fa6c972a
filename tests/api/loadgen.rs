//! `shop loadgen` in CI: a few seconds at a low rate against an embedded
//! platform, proving the harness works end to end (every order final, no
//! errors, a JSON result and a well-formed SVG). Timings are not asserted:
//! they belong in BENCHMARKS.md.

use serde_json::Value;
use shop::loadgen::{self, Length, Load, Options, Plan, TargetSpec};
use shop::Settings;
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

/// The embedded platform's settings, as `spawn_app` sets them: small pools
/// and fast polling, on the test Postgres and Redis.
fn settings() -> Settings {
    let base = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let mut settings = Settings::defaults();
    settings.database_url = format!("{base}/shop");
    settings.database_pool_size = 8;
    settings.redis_url = crate::helpers::redis_url();
    settings.kafka_partitions = Some(3);
    settings.kafka_session_timeout_ms = 6000;
    settings.payment_latency_ms = 0;
    settings.saga_sweep_ms = 100;
    settings.outbox_poll_ms = 20;
    settings.shutdown_grace_seconds = 5;
    settings
}

fn temp_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("shop-loadgen-{}-{name}", Uuid::new_v4().simple()))
}

fn options(load: Load, length: Length) -> Options {
    Options {
        plan: Plan {
            load,
            length,
            // A cycle of ten: any multiple of ten orders has exactly this mix.
            mix: "confirm=8,out-of-stock=1,decline=1".parse().unwrap(),
            final_timeout: Duration::from_secs(30),
            max_in_flight: 1000,
            quiet: false,
        },
        customers: 5,
        products: 3,
        request_timeout: Duration::from_secs(10),
        out: Some(temp_file("result.json")),
        svg: Some(temp_file("chart.svg")),
    }
}

async fn run(options: &Options) -> Value {
    let _telemetry = shop::telemetry::init(shop::config::LogFormat::Text);
    let target = TargetSpec::Embedded {
        settings: Box::new(settings()),
        fresh_database: true,
    };
    let report = loadgen::run(target, options).await.unwrap();
    assert!(
        report.summary().contains("errors     none"),
        "{}",
        report.summary()
    );
    let path = options.out.as_ref().unwrap();
    let json: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let _ = std::fs::remove_file(path);
    let svg_path = options.svg.as_ref().unwrap();
    let svg = std::fs::read_to_string(svg_path).unwrap();
    let _ = std::fs::remove_file(svg_path);
    let doc = roxmltree::Document::parse(&svg).expect("the chart is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .count();
    assert_eq!(lines, 7, "three latency and four throughput lines");
    json
}

/// Every order sent reached the final status its mix entry intended.
fn assert_all_settled(json: &Value, orders: u64) {
    let counts = &json["counts"];
    assert_eq!(counts["sent"], orders, "{json}");
    assert_eq!(counts["accepted"], orders, "{json}");
    assert_eq!(counts["finished"], orders, "{json}");
    assert_eq!(counts["errors"], 0, "{json}");
    assert_eq!(counts["unexpected"], 0, "{json}");
    assert_eq!(counts["confirmed"], orders * 8 / 10, "{json}");
    assert_eq!(counts["rejected"]["OUT_OF_STOCK"], orders / 10, "{json}");
    assert_eq!(
        counts["rejected"]["PAYMENT_DECLINED"],
        orders / 10,
        "{json}"
    );
    assert_eq!(json["errors"], serde_json::json!({}));
    assert_eq!(json["latency_ms"]["count"], orders);
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(json["latency_ms"][key].as_f64().unwrap() > 0.0, "{key}");
    }
    let series = json["series"].as_array().unwrap();
    let total = |field: &str| {
        series
            .iter()
            .map(|s| s[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(total("sent"), orders);
    assert_eq!(total("finished"), orders);
}

#[tokio::test]
async fn loadgen_open_loop_settles_every_order_and_writes_its_result() {
    let options = options(
        Load::Open { rate: 20.0 },
        Length::Duration(Duration::from_secs(3)),
    );
    let json = run(&options).await;
    assert_all_settled(&json, 60);
    assert_eq!(json["config"]["mode"], "open");
    assert_eq!(json["config"]["target"], "embedded");
}

#[tokio::test]
async fn loadgen_closed_loop_sends_exactly_the_requested_orders() {
    let options = options(Load::Closed { concurrency: 4 }, Length::Orders(20));
    let json = run(&options).await;
    assert_all_settled(&json, 20);
    assert_eq!(json["config"]["mode"], "closed");
}
