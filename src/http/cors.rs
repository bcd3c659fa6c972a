//! Cross-origin access to the order and product services, so the storefront
//! page (served by the gateway, another origin) can call them from a
//! browser.
//!
//! Any origin is allowed: callers authenticate with a bearer token in the
//! `Authorization` header, never with cookies, so a foreign page gains
//! nothing it could not do with its own token (and credentials are not
//! allowed). Errors carry the CORS headers too, so a page can read the JSON
//! error body instead of seeing an opaque network failure. The allowed
//! origin echoes the request's, so every answer says `Vary: Origin`: a
//! shared cache must not hand one origin's answer to another.

use super::error;
use warp::{Filter, Rejection, Reply};

/// Headers a browser may send: the token, the JSON body's type, a retry
/// key, and the trace context.
const ALLOWED_HEADERS: [&str; 4] = [
    "authorization",
    "content-type",
    "idempotency-key",
    "traceparent",
];
/// Response headers a page may read.
const EXPOSED_HEADERS: [&str; 2] = ["location", "idempotent-replayed"];
/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: u32 = 600;

/// `routes` answering browsers from any origin, errors included.
pub fn allow_browsers<F>(
    routes: F,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone
where
    F: Filter<Extract = (warp::reply::Response,), Error = Rejection>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let cors = warp::cors()
        .allow_any_origin()
        .allow_methods(["GET", "POST", "PUT"])
        .allow_headers(ALLOWED_HEADERS)
        .expose_headers(EXPOSED_HEADERS)
        .max_age(PREFLIGHT_MAX_AGE)
        .build();
    // Recovered inside the CORS wrapper: a rejection that escaped it would
    // be answered without `Access-Control-Allow-Origin`.
    routes
        .recover(error::recover)
        .unify()
        .with(cors)
        .map(vary_on_origin)
}

/// `reply`, saying that it depends on the request's `Origin`.
fn vary_on_origin(reply: impl Reply) -> warp::reply::Response {
    let mut response = reply.into_response();
    response.headers_mut().append(
        warp::http::header::VARY,
        warp::http::HeaderValue::from_static("Origin"),
    );
    response
}
