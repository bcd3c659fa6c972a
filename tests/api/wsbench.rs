//! `shop wsbench` works end to end: every connection opens and subscribes,
//! and every published update reaches its one client. (Its timings go to
//! BENCHMARKS.md; none is asserted here.)

use crate::helpers::{spawn_app, JWT_SECRET};
use shop::auth::Authenticator;
use shop::wsbench::{run, WsBenchArgs};

#[tokio::test]
async fn the_websocket_benchmark_delivers_every_update_to_its_client() {
    let app = spawn_app().await;
    let args = WsBenchArgs {
        gateway_url: format!("{}/ws", app.ws_url),
        connections: 40,
        rate: 100,
        seconds: 2,
        connect_parallelism: 10,
        gateway_pid: Some(std::process::id()),
        out: None,
    };
    let auth = Authenticator::from_secret(JWT_SECRET.as_bytes()).unwrap();
    let result = run(&args, &app.kafka_settings(), &auth).await.unwrap();
    assert_eq!(result.connections, 40);
    assert_eq!(result.failed_connections, 0);
    assert_eq!(result.published, 200);
    assert_eq!(
        result.received, 200,
        "each update reaches its customer once"
    );
    assert_eq!(result.closed_during_run, 0);
    assert!(result.latency_ms.max >= result.latency_ms.p50);
    assert!(result.gateway_rss_kib.is_some());
    app.teardown().await;
}
