//! Abuse of the HTTP servers: idle and slow connections, header and body
//! timeouts, descriptors, metrics cardinality, malformed requests.

use crate::helpers::{admin_token, spawn_app_with, token, Options, TestApp};
use serde_json::Value;
use shop::auth::Role;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The header timeout the tests below run with.
const HEADER_TIMEOUT_SECONDS: u64 = 2;

/// An app whose servers time heads out after [`HEADER_TIMEOUT_SECONDS`],
/// bodies after 2 s, and serve at most 16 connections at once.
async fn strict_app() -> TestApp {
    spawn_app_with(Options {
        configure: Some(|settings| {
            settings.http_header_timeout_seconds = HEADER_TIMEOUT_SECONDS;
            settings.http_body_timeout_seconds = 2;
            settings.http_max_connections = 16;
        }),
        ..Options::default()
    })
    .await
}

/// `host:port` of a base URL.
fn host(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// Reads what the server sends until it closes the connection; `None` if
/// it is still open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| received)
}

/// Sends `request` on a new connection and reads the answer to its close.
async fn raw_request(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(20))
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status and JSON body of a raw answer.
fn status_and_json(answer: &str) -> (u16, Value) {
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    (status, json)
}

/// Connections to local `port` that this process has accepted: sockets it
/// holds a descriptor of whose local end is `port` (its clients' ends, and
/// connections still in the listen backlog, hold none there).
fn accepted_connections(port: u16) -> usize {
    let held: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 01: ESTABLISHED (not the listening socket itself).
            local_port == Some(port)
                && fields.get(3) == Some(&"01")
                && fields.get(9).is_some_and(|inode| held.contains(*inode))
        })
        .count()
}

#[tokio::test]
async fn bare_partial_and_idle_connections_are_closed_after_the_header_timeout() {
    let app = strict_app().await;
    let addr = host(&app.order_url);
    let within = Duration::from_secs(3 * HEADER_TIMEOUT_SECONDS + 5);
    // Connects and sends nothing.
    let mut bare = TcpStream::connect(&addr).await.unwrap();
    // Sends half a head, then nothing.
    let mut partial = TcpStream::connect(&addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // One request, then keeps the connection open.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    for (name, stream) in [
        ("bare", &mut bare),
        ("partial", &mut partial),
        ("idle keep-alive", &mut idle),
    ] {
        assert!(
            read_until_closed(stream, within).await.is_some(),
            "{name} connection still open"
        );
    }
    app.teardown().await;
}

#[tokio::test]
async fn idle_connections_past_the_cap_hold_no_descriptors_and_a_client_still_gets_through() {
    let app = strict_app().await;
    let addr = host(&app.order_url);
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = accepted_connections(port);
    assert!(
        held <= 16,
        "the server holds {held} of 200 idle connections, past its cap of 16"
    );
    assert!(held > 0, "the count sees the server's connections");
    // A normal client is served once idle ones time out.
    let health = tokio::time::timeout(
        Duration::from_secs(60),
        reqwest::get(format!("{}/healthz", app.order_url)),
    )
    .await
    .expect("served")
    .unwrap();
    assert_eq!(health.status(), 200);
    drop(idle);
    app.teardown().await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_gets_a_json_408() {
    let app = strict_app().await;
    let request = format!(
        "POST /products HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"name\":",
        admin_token()
    );
    let (status, body) =
        status_and_json(&raw_request(&host(&app.product_url), request.as_bytes()).await);
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"], "request_timeout");
    app.teardown().await;
}

#[tokio::test]
async fn a_chunked_body_is_read_and_an_oversized_one_gets_413() {
    let app = strict_app().await;
    let body = r#"{"sku":"CHUNKED-1","name":"Chunked","price_cents":100,"stock":3}"#;
    let request = format!(
        "POST /products HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         {:x}\r\n{body}\r\n0\r\n\r\n",
        admin_token(),
        body.len()
    );
    let (status, created) =
        status_and_json(&raw_request(&host(&app.product_url), request.as_bytes()).await);
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "Chunked");
    // 70 KiB in chunks, past the 64 KiB limit.
    let chunk = "x".repeat(1024);
    let mut request = format!(
        "POST /products HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        admin_token()
    );
    for _ in 0..70 {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    let (status, refused) =
        status_and_json(&raw_request(&host(&app.product_url), request.as_bytes()).await);
    assert_eq!(status, 413, "{refused}");
    assert_eq!(refused["error"], "payload_too_large");
    app.teardown().await;
}

#[tokio::test]
async fn requests_hyper_cannot_parse_get_json_400_414_and_431() {
    let app = strict_app().await;
    let addr = host(&app.product_url);
    // The README's restock command pasted with its literal `<id>`.
    let (status, body) = status_and_json(
        &raw_request(
            &addr,
            b"PUT /products/<id>/stock HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .await,
    );
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let long = format!(
        "GET /products/{} HTTP/1.1\r\nhost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let (status, body) = status_and_json(&raw_request(&addr, long.as_bytes()).await);
    assert_eq!(
        (status, body["error"].as_str()),
        (414, Some("uri_too_long"))
    );
    let mut many = String::from("GET /products HTTP/1.1\r\nhost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (status, body) = status_and_json(&raw_request(&addr, many.as_bytes()).await);
    assert_eq!(
        (status, body["error"].as_str()),
        (431, Some("request_header_fields_too_large"))
    );
    app.teardown().await;
}

#[tokio::test]
async fn undecodable_header_bytes_get_400_not_405() {
    let app = strict_app().await;
    let addr = host(&app.order_url);
    let body = r#"{"items":[]}"#;
    let customer = format!("authorization: Bearer {}", token("alice", Role::Customer));
    let json = "content-type: application/json";
    for headers in [
        vec![
            "authorization: Bearer \u{e9}t\u{e9}".to_owned(),
            json.to_owned(),
        ],
        vec![
            customer.clone(),
            json.to_owned(),
            "idempotency-key: cl\u{e9}".to_owned(),
        ],
        vec![
            customer.clone(),
            "content-type: application/\u{e9}".to_owned(),
        ],
    ] {
        let mut request = format!(
            "POST /orders HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n",
            body.len()
        )
        .into_bytes();
        for header in &headers {
            // Latin-1 bytes, as a careless client would send them.
            request.extend(header.chars().map(|c| c as u8));
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(format!("\r\n{body}").as_bytes());
        let header = headers.last().unwrap();
        let (status, json) = status_and_json(&raw_request(&addr, &request).await);
        assert_eq!(status, 400, "{header}: {json}");
        assert_eq!(json["error"], "bad_request", "{header}");
    }
    app.teardown().await;
}

#[tokio::test]
async fn made_up_methods_and_paths_do_not_grow_the_metrics() {
    let app = strict_app().await;
    let client = reqwest::Client::new();
    // Every route's series exist once something was asked of it.
    for i in 0..50 {
        let _ = client
            .request(
                reqwest::Method::from_bytes(format!("X{i}").as_bytes()).unwrap(),
                format!("{}/p{i}/q", app.order_url),
            )
            .send()
            .await
            .unwrap();
    }
    let before = app.metrics().await.len();
    for i in 50..2050 {
        let response = client
            .request(
                reqwest::Method::from_bytes(format!("X{i}").as_bytes()).unwrap(),
                format!("{}/p{i}/q", app.order_url),
            )
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error());
    }
    let after = app.metrics().await;
    assert!(
        after.len() < before + 64 * 1024,
        "2,000 made-up requests grew /metrics from {before} to {} bytes",
        after.len()
    );
    assert!(
        after.contains("method=\"OTHER\",route=\"unmatched\""),
        "{after}"
    );
    // A customer's real request is still labelled by its route.
    let order = client
        .get(format!("{}/orders/{}", app.order_url, uuid::Uuid::now_v7()))
        .bearer_auth(token("alice", Role::Customer))
        .send()
        .await
        .unwrap();
    assert_eq!(order.status(), 404);
    assert!(app
        .metrics()
        .await
        .contains("method=\"GET\",route=\"/orders/{id}\",status=\"404\""));
    app.teardown().await;
}

/// An HS256 token signed with the test secret, with `claims` and `header`.
fn signed(claims: Value, header: jsonwebtoken::Header) -> String {
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(crate::helpers::JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn tokens_that_could_never_be_valid_get_401_not_503_or_422() {
    let app = strict_app().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hs256 = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let mut crit = hs256.clone();
    crit.crit = Some(vec!["x-unknown".into()]);
    let claims = |sub: &str| serde_json::json!({"sub": sub, "role": "customer", "exp": now + 600});
    let mut early = claims("alice");
    early["nbf"] = (now + 3600).into();
    let product = app.create_product(5).await;
    let body = serde_json::json!({"items": [{"product_id": product, "quantity": 1}]});
    for (why, token) in [
        ("a NUL in sub", signed(claims("al\u{0}ice"), hs256.clone())),
        (
            "a 200-byte sub",
            signed(claims(&"a".repeat(200)), hs256.clone()),
        ),
        ("nbf an hour ahead", signed(early.clone(), hs256.clone())),
        (
            "an unknown crit header",
            signed(claims("alice"), crit.clone()),
        ),
    ] {
        let answer = reqwest::Client::new()
            .post(format!("{}/orders", app.order_url))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401, "{why}");
        let json: Value = answer.json().await.unwrap();
        assert_eq!(json["error"], "unauthorized", "{why}");
    }
    app.teardown().await;
}

#[tokio::test]
async fn answers_that_echo_the_origin_say_they_vary_with_it() {
    let app = strict_app().await;
    let client = reqwest::Client::new();
    for request in [
        client.get(format!("{}/products", app.product_url)),
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/orders", app.order_url),
            )
            .header("access-control-request-method", "POST"),
        client.get(format!("{}/orders", app.order_url)), // 401
    ] {
        let answer = request
            .header("origin", "https://shop.example")
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let headers = answer.headers();
        assert_eq!(
            headers
                .get("access-control-allow-origin")
                .and_then(|v| v.to_str().ok()),
            Some("https://shop.example"),
            "{status}"
        );
        let vary: Vec<&str> = headers
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert!(
            vary.iter().any(|v| v
                .split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("origin"))),
            "{status}: vary {vary:?}"
        );
    }
    app.teardown().await;
}

#[tokio::test]
async fn with_an_audience_and_issuer_configured_only_tokens_naming_them_pass() {
    let app = spawn_app_with(Options {
        configure: Some(|settings| {
            settings.jwt_audience = Some("shop-api".into());
            settings.jwt_issuer = Some("https://idp.example/realms/shop".into());
        }),
        ..Options::default()
    })
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let hs256 = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let claims = |aud: Value, iss: &str| serde_json::json!({"sub": "alice", "role": "customer", "exp": exp, "aud": aud, "iss": iss});
    let issuer = "https://idp.example/realms/shop";
    for (why, token, status) in [
        // Keycloak lists several audiences.
        (
            "both match",
            signed(
                claims(serde_json::json!(["account", "shop-api"]), issuer),
                hs256.clone(),
            ),
            200,
        ),
        (
            "another audience",
            signed(claims("account".into(), issuer), hs256.clone()),
            401,
        ),
        (
            "another issuer",
            signed(
                claims("shop-api".into(), "https://evil.example"),
                hs256.clone(),
            ),
            401,
        ),
        ("neither claim", token("alice", Role::Customer), 401),
    ] {
        let answer = reqwest::Client::new()
            .get(format!("{}/orders", app.order_url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "{why}");
    }
    app.teardown().await;
}
