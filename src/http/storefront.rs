//! The storefront page the gateway serves at `/`: plain HTML, JS and CSS
//! from `web/`, compiled into the binary so the one `shop` binary serves
//! them (no Node at build or run time). The page calls the product and
//! order services directly (they allow cross-origin calls, see
//! [`super::cors`]); `GET /config.json` tells it where they are, and the
//! WebSocket is this same origin's `/ws`.
//!
//! In development mode (no `JWT_SECRET` nor `JWT_PUBLIC_KEY_FILE`) the page
//! offers a customer picker, backed by `POST /dev/token`, which mints a
//! customer token with the development secret. With configured keys the
//! route does not exist (404): a real deployment gets tokens from its
//! identity provider, never from an open endpoint.

use super::error::{ApiError, ErrorBody};
use super::json_body;
use crate::auth::{Authenticator, Role};
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use warp::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use warp::{Filter, Rejection, Reply};

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");
const FAVICON_SVG: &str = include_str!("../../web/favicon.svg");
/// Where `index.html` names the assets' version.
const VERSION_MARK: &str = "{{version}}";
/// How long a development token lasts: a working day at the page.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);
/// Longest customer id the picker accepts.
const MAX_CUSTOMER_LEN: usize = 64;

/// What the page needs to know, from the settings.
#[derive(Debug, Clone)]
pub struct StorefrontConfig {
    /// The product service's base URL as a browser reaches it.
    pub product_url: String,
    /// The order service's base URL as a browser reaches it.
    pub order_url: String,
    /// Whether `POST /dev/token` mints tokens (development mode only).
    pub dev_tokens: bool,
}

/// Why the storefront cannot be served as configured.
#[derive(Debug, thiserror::Error)]
#[error("{name} {url:?} is not an absolute http(s) URL")]
pub struct BadUrl {
    /// The setting.
    name: &'static str,
    /// Its value.
    url: String,
}

/// The gateway's plain HTTP routes in its OpenAPI document (`GET /ws`, the
/// WebSocket, is described in the README, section "WebSocket protocol").
#[derive(utoipa::OpenApi)]
#[openapi(paths(index, asset, page_config, mint_dev_token))]
pub struct StorefrontApi;

/// `GET /config.json`: where the page finds the other services.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
struct PageConfig {
    /// Product service base URL (no trailing slash).
    product_url: String,
    /// Order service base URL (no trailing slash).
    order_url: String,
    /// Whether the customer picker (`POST /dev/token`) is available.
    dev_tokens: bool,
}

/// Body of `POST /dev/token`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DevTokenRequest {
    /// The customer to sign a token for: 1 to 64 letters, digits or `-_.@`.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$", example = "alice")]
    customer: String,
}

/// Answer of `POST /dev/token`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DevToken {
    /// A customer bearer token.
    token: String,
    /// The customer it stands for.
    customer: String,
    /// Seconds until it expires.
    expires_in: u64,
}

/// Everything computed once at start-up and shared by every request.
struct Page {
    /// `index.html` with the assets' version filled in.
    index: String,
    /// Changes whenever an asset does, so assets may be cached for ever.
    version: String,
    /// The page's Content-Security-Policy.
    csp: HeaderValue,
    /// Body of `GET /config.json`.
    config: PageConfig,
}

/// Every storefront route: `/`, its assets, `/config.json`, `/dev/token`.
pub fn routes(
    config: StorefrontConfig,
    auth: Authenticator,
) -> Result<impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone, BadUrl> {
    let product = origin("PUBLIC_PRODUCT_URL", &config.product_url)?;
    let order = origin("PUBLIC_ORDER_URL", &config.order_url)?;
    let version = assets_version();
    // Only this origin's files run; the page talks to the two services and
    // to its own origin's WebSocket ('self' covers ws: on the same host).
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' {product} {order}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    let page = Arc::new(Page {
        index: INDEX_HTML.replace(VERSION_MARK, &version),
        version,
        csp: HeaderValue::from_str(&csp).map_err(|_| BadUrl {
            name: "PUBLIC_PRODUCT_URL or PUBLIC_ORDER_URL",
            url: csp.clone(),
        })?,
        config: PageConfig {
            product_url: config.product_url.trim_end_matches('/').to_owned(),
            order_url: config.order_url.trim_end_matches('/').to_owned(),
            dev_tokens: config.dev_tokens,
        },
    });

    let with_page = {
        let page = page.clone();
        warp::any().map(move || page.clone())
    };
    let index = warp::path::end()
        .and(warp::get())
        .and(with_page.clone())
        .map(index);
    let asset = warp::path!("assets" / String / String)
        .and(warp::get())
        .and(with_page.clone())
        .and_then(asset);
    let page_config = warp::path!("config.json")
        .and(warp::get())
        .and(with_page)
        .map(page_config);
    let dev_tokens = config.dev_tokens;
    let dev_token = warp::path!("dev" / "token")
        .and(warp::post())
        // Outside development mode the route does not exist at all.
        .and_then(move || async move {
            if dev_tokens {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(json_body::<DevTokenRequest>())
        .and(warp::any().map(move || auth.clone()))
        .and_then(mint_dev_token);
    Ok(index
        .or(asset)
        .unify()
        .or(page_config)
        .unify()
        .or(dev_token)
        .unify())
}

/// The storefront page.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "storefrontPage",
    tag = "storefront",
    responses((status = 200, description = "The page, with a strict Content-Security-Policy.",
               body = String, content_type = "text/html"))
)]
fn index(page: Arc<Page>) -> warp::reply::Response {
    let mut response = page.index.clone().into_response();
    set(&mut response, "text/html; charset=utf-8", "no-cache");
    response
        .headers_mut()
        .insert("content-security-policy", page.csp.clone());
    response
}

/// One of the page's assets, named by a digest of their content so it can
/// be cached for ever.
#[utoipa::path(
    get,
    path = "/assets/{version}/{name}",
    operation_id = "storefrontAsset",
    tag = "storefront",
    params(
        ("version" = String, Path, description = "The assets' digest, as `/` names it; another version gets today's file, uncached."),
        ("name" = String, Path, description = "`app.js`, `app.css` or `favicon.svg`."),
    ),
    responses(
        (status = 200, description = "The file.",
         content((String = "text/javascript"), (String = "text/css"), (String = "image/svg+xml"))),
        (status = 404, description = "No such asset.", body = ErrorBody),
    )
)]
async fn asset(
    version: String,
    name: String,
    page: Arc<Page>,
) -> Result<warp::reply::Response, Rejection> {
    let (body, content_type) = match name.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "favicon.svg" => (FAVICON_SVG, "image/svg+xml"),
        _ => return Err(warp::reject::not_found()),
    };
    // A page from an older binary may ask for its old version: it gets
    // today's file, which must not be cached under that name.
    let cache = if version == page.version {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = body.into_response();
    set(&mut response, content_type, cache);
    Ok(response)
}

/// Where the page finds the product and order services, and whether it
/// may ask for development tokens.
#[utoipa::path(
    get,
    path = "/config.json",
    operation_id = "storefrontConfig",
    tag = "storefront",
    responses((status = 200, description = "The page's configuration.", body = PageConfig))
)]
fn page_config(page: Arc<Page>) -> warp::reply::Response {
    let mut response = warp::reply::json(&page.config).into_response();
    set(&mut response, "application/json", "no-store");
    response
}

/// A customer token for the page's customer picker: development mode only
/// (neither `JWT_SECRET` nor `JWT_PUBLIC_KEY_FILE` set); otherwise this
/// route does not exist.
#[utoipa::path(
    post,
    path = "/dev/token",
    operation_id = "devToken",
    tag = "storefront",
    request_body = DevTokenRequest,
    responses(
        (status = 200, description = "A customer token.", body = DevToken),
        (status = 404, description = "Not in development mode.", body = ErrorBody),
        (status = 422, description = "`customer` is not 1 to 64 letters, digits or `-_.@`.", body = ErrorBody),
        (status = 503, description = "The token could not be signed.", body = ErrorBody),
    )
)]
async fn mint_dev_token(
    request: DevTokenRequest,
    auth: Authenticator,
) -> Result<warp::reply::Response, Rejection> {
    let token = dev_token(&request.customer, &auth)?;
    let mut response = warp::reply::json(&token).into_response();
    set(&mut response, "application/json", "no-store");
    Ok(response)
}

/// A customer token for `customer`, whose id must be plain.
fn dev_token(customer: &str, auth: &Authenticator) -> Result<DevToken, ApiError> {
    let customer = customer.trim();
    let valid = !customer.is_empty()
        && customer.len() <= MAX_CUSTOMER_LEN
        && customer
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if !valid {
        return Err(ApiError::Validation(format!(
            "customer must be 1 to {MAX_CUSTOMER_LEN} letters, digits or -_.@"
        )));
    }
    // Customers only: an admin token from an open endpoint would hand out
    // restocking and every customer's orders.
    let token = auth
        .mint(customer, Role::Customer, DEV_TOKEN_TTL)
        .map_err(|e| ApiError::Unavailable(format!("cannot sign a token: {e}")))?;
    Ok(DevToken {
        token,
        customer: customer.to_owned(),
        expires_in: DEV_TOKEN_TTL.as_secs(),
    })
}

/// Sets the content type, caching, and the headers every answer here has.
fn set(response: &mut warp::reply::Response, content_type: &'static str, cache: &'static str) {
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
}

/// The origin (`scheme://host[:port]`) of `url`, for the CSP.
fn origin(name: &'static str, url: &str) -> Result<String, BadUrl> {
    let bad = || BadUrl {
        name,
        url: url.to_owned(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(bad());
    }
    Ok(parsed.origin().ascii_serialization())
}

/// A digest of the assets: a new binary with changed assets gets new URLs.
fn assets_version() -> String {
    // SipHash with fixed keys: the same files give the same version in
    // every replica built from the same source.
    let mut hasher = std::hash::DefaultHasher::new();
    (APP_JS, APP_CSS, FAVICON_SVG).hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    // The routes themselves are tested against a running gateway in
    // tests/api/storefront.rs (warp's test module is not compiled in).
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn auth() -> Authenticator {
        Authenticator::from_secret(SECRET).unwrap()
    }

    #[test]
    fn development_tokens_are_customer_tokens() {
        let minted = dev_token(" alice ", &auth()).unwrap();
        assert_eq!(minted.customer, "alice");
        assert_eq!(minted.expires_in, DEV_TOKEN_TTL.as_secs());
        let principal = auth().verify(&minted.token).unwrap();
        assert_eq!(principal.subject, "alice");
        assert_eq!(principal.role, Role::Customer);
    }

    #[test]
    fn odd_customer_ids_get_no_token() {
        for customer in ["", "<script>", &"a".repeat(MAX_CUSTOMER_LEN + 1)] {
            assert!(
                matches!(dev_token(customer, &auth()), Err(ApiError::Validation(_))),
                "{customer:?}"
            );
        }
    }

    #[test]
    fn the_page_names_its_assets_by_version() {
        let index = INDEX_HTML.replace(VERSION_MARK, &assets_version());
        assert!(!index.contains(VERSION_MARK));
        assert!(index.contains(&format!("/assets/{}/app.js", assets_version())));
    }

    #[test]
    fn service_urls_must_be_absolute_http() {
        assert!(origin("X", "127.0.0.1:8080").is_err());
        assert!(origin("X", "ftp://example.com").is_err());
        assert_eq!(
            origin("X", "https://shop.example.com/api/").unwrap(),
            "https://shop.example.com"
        );
        assert_eq!(
            origin("X", "http://127.0.0.1:8081/").unwrap(),
            "http://127.0.0.1:8081"
        );
    }
}
