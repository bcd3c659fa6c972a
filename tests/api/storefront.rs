//! The storefront page on the gateway: the page and its assets with their
//! caching and security headers, the configuration naming the services,
//! development tokens refused once a real key is configured, and the CORS
//! answers that let the page call the order and product services.

use crate::helpers::{spawn_app, token};
use serde_json::Value;
use shop::auth::Role;

/// The gateway's HTTP base URL.
fn gateway_url(app: &crate::helpers::TestApp) -> String {
    app.ws_url.replacen("ws://", "http://", 1)
}

#[tokio::test]
async fn the_gateway_serves_the_storefront_page() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let page = http.get(gateway_url(&app)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        csp.contains(&app.order_url) && csp.contains(&app.product_url),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("<main"), "{html}");

    // The script the page names, cached for ever under its versioned name.
    let script = html
        .split('"')
        .find(|s| s.starts_with("/assets/") && s.ends_with("/app.js"))
        .expect("the page names its script");
    let asset = http
        .get(format!("{}{script}", gateway_url(&app)))
        .send()
        .await
        .unwrap();
    assert_eq!(asset.status(), 200);
    assert_eq!(
        asset.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        asset.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );

    // Where the page finds the services: this platform's own.
    let config: Value = http
        .get(format!("{}/config.json", gateway_url(&app)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["order_url"], app.order_url.as_str());
    assert_eq!(config["product_url"], app.product_url.as_str());
    assert_eq!(config["dev_tokens"], false);
    app.teardown().await;
}

#[tokio::test]
async fn dev_tokens_are_refused_when_a_secret_is_configured() {
    // spawn_app configures JWT_SECRET, so this is not development mode.
    let app = spawn_app().await;
    let response = reqwest::Client::new()
        .post(format!("{}/dev/token", gateway_url(&app)))
        .json(&serde_json::json!({"customer": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(body.get("token").is_none(), "{body}");
    app.teardown().await;
}

#[tokio::test]
async fn browsers_may_call_the_order_and_product_services_from_the_page() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let page = "http://127.0.0.1:8083";

    // The preflight of a checkout: a JSON body, a token and a retry key.
    let preflight = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/orders", app.order_url),
        )
        .header("origin", page)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, idempotency-key",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    assert_eq!(preflight.headers()["access-control-allow-origin"], page);
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for header in ["authorization", "content-type", "idempotency-key"] {
        assert!(allowed.contains(header), "{allowed}");
    }

    // Errors carry the header too, so the page can read why.
    let unauthorized = http
        .get(format!("{}/orders", app.order_url))
        .header("origin", page)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(unauthorized.headers()["access-control-allow-origin"], page);

    let listed = http
        .get(format!("{}/orders", app.order_url))
        .header("origin", page)
        .bearer_auth(token("alice", Role::Customer))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.headers()["access-control-allow-origin"], page);

    let products = http
        .get(format!("{}/products", app.product_url))
        .header("origin", page)
        .send()
        .await
        .unwrap();
    assert_eq!(products.status(), 200);
    assert_eq!(products.headers()["access-control-allow-origin"], page);

    // A preflight for a header the services do not take is refused.
    let refused = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/orders", app.order_url),
        )
        .header("origin", page)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-forwarded-user")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    app.teardown().await;
}
