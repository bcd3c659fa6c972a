//! What the real binary logs while clients misbehave: no configured secret
//! at any level, and no WARN for a client's mistake.

use crate::helpers::{free_port, postgres_base, token, JWT_SECRET};
use shop::auth::Role;
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

/// `shop all` with JSON logs at `rust_log`, `database_url` as its database,
/// run until it has answered `requests` (method, path, token) on the order
/// service and stopped on SIGTERM; its log.
async fn run_shop(
    rust_log: &str,
    database_url: &str,
    requests: &[(&str, &str, Option<String>)],
) -> String {
    let db_name = format!("shop_test_{}", Uuid::new_v4().simple());
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let log_path: PathBuf = std::env::temp_dir().join(format!("{db_name}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut shop = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .arg("all")
        .env_remove("KAFKA_BROKERS")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env("JWT_SECRET", JWT_SECRET)
        .env("DATABASE_URL", database_url.replace("{db}", &db_name))
        .env("DATABASE_POOL_SIZE", "4")
        .env("REDIS_PREFIX", &db_name)
        .env("HTTP_HOST", "127.0.0.1")
        .env("ORDER_PORT", ports[0].to_string())
        .env("PRODUCT_PORT", ports[1].to_string())
        .env("PAYMENT_PORT", ports[2].to_string())
        .env("GATEWAY_PORT", ports[3].to_string())
        .env("KAFKA_PARTITIONS", "1")
        .env("SHUTDOWN_GRACE_SECONDS", "5")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", rust_log)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("shop starts");
    let http = reqwest::Client::new();
    let started = tokio::time::Instant::now();
    for port in ports {
        while !http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "shop never became ready; see {}",
                log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for (method, path, bearer) in requests {
        let mut request = http.request(
            method.parse().unwrap(),
            format!("http://127.0.0.1:{}{path}", ports[0]),
        );
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let answer = request.send().await.unwrap();
        assert!(
            answer.status().is_client_error(),
            "{method} {path}: {}",
            answer.status()
        );
    }
    // The README's restock command pasted with its literal `<id>`: hyper
    // refuses it before any route sees it.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", ports[1]))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        b"PUT /products/<id>/stock HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut answer),
    )
    .await;
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let pid = shop.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = tokio::time::timeout(Duration::from_secs(30), shop.wait())
        .await
        .expect("shop exits on SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit}");
    let text = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    let _ = shop_actors::db::drop_database(&format!("{}/{db_name}", postgres_base())).await;
    text
}

/// Requests a careless client sends: refused, one way or another.
fn careless_requests() -> Vec<(&'static str, &'static str, Option<String>)> {
    vec![
        ("GET", "/orders", None),
        ("GET", "/orders", Some("not.a.token".into())),
        (
            "GET",
            "/orders/not-a-uuid",
            Some(token("alice", Role::Customer)),
        ),
        ("DELETE", "/orders", Some(token("alice", Role::Customer))),
        ("GET", "/p1/q", None),
    ]
}

#[tokio::test]
async fn no_configured_secret_is_logged_at_any_level() {
    let base = postgres_base();
    // Trust authentication ignores the password; the logs must not show it.
    let password = format!("db-password-{}", Uuid::new_v4().simple());
    let url = format!("{base}/{{db}}?password={password}");
    let log = run_shop("trace", &url, &careless_requests()).await;
    assert!(
        log.contains("password=***"),
        "the database line is logged, redacted"
    );
    for secret in [password.as_str(), JWT_SECRET] {
        let leaks: Vec<&str> = log.lines().filter(|line| line.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "{} lines show a secret: {:?}",
            leaks.len(),
            &leaks[..leaks.len().min(3)]
        );
    }
}

#[tokio::test]
async fn a_clients_mistakes_log_no_warning() {
    let base = postgres_base();
    let log = run_shop(
        shop::telemetry::DEFAULT_FILTER,
        &format!("{base}/{{db}}"),
        &careless_requests(),
    )
    .await;
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(r#""level":"WARN""#) || line.contains(r#""level":"ERROR""#))
        .filter(|line| line.contains(r#""name":"request""#) || line.contains(r#""target":"warp"#))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}
