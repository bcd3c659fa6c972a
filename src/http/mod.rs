//! HTTP for every service: the filters shared by all (JSON bodies with a
//! size limit, health and readiness, `/metrics`, `/openapi.json`, CORS), one
//! module of routes per service (the gateway's storefront page included),
//! and the server loop with graceful shutdown and request metrics.

pub mod admin;
pub mod cors;
pub mod error;
pub mod gateway;
pub mod health;
pub mod openapi;
pub mod order;
pub mod product;
pub mod storefront;

use error::ApiError;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use tokio::sync::watch;
use warp::{Filter, Rejection, Reply};

/// Largest request body accepted, in bytes.
pub const MAX_BODY: u64 = 64 * 1024;

/// A JSON body of at most [`MAX_BODY`] bytes, sent as `application/json`.
pub fn json_body<T: DeserializeOwned + Send>(
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and_then(|content_type: Option<String>| async move {
            let is_json = content_type
                .as_deref()
                .and_then(|ct| ct.split(';').next())
                .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
            if is_json {
                Ok(())
            } else {
                Err(Rejection::from(ApiError::UnsupportedMediaType(format!(
                    "content-type must be application/json, got {}",
                    content_type.as_deref().unwrap_or("none")
                ))))
            }
        })
        .untuple_one()
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::json())
}

/// The process's metrics for Prometheus, in the OpenMetrics text format:
/// HTTP requests, saga outcomes and durations, outbox backlog, consumer
/// lag, WebSocket connections, dead letters. In `shop all` every port
/// serves the same process-wide figures.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Every metric.", body = String,
               content_type = "application/openmetrics-text"))
)]
fn metrics_route() -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("metrics").and(warp::get()).map(|| {
        let mut response = shop_actors::metrics::metrics().encode().into_response();
        response.headers_mut().insert(
            warp::http::header::CONTENT_TYPE,
            warp::http::HeaderValue::from_static(shop_actors::metrics::CONTENT_TYPE),
        );
        response
    })
}

/// Serves `routes` (plus `/metrics`) on `listener` until `shutdown` turns
/// true; returns the task running the server.
pub fn serve(
    name: &'static str,
    routes: warp::filters::BoxedFilter<(warp::reply::Response,)>,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    // One span per request, named after the service, for the logs; every
    // answer, errors included, counted and timed.
    let answered = metrics_route()
        .or(openapi::route(name))
        .unify()
        .or(routes)
        .unify()
        .recover(error::recover)
        .map(Reply::into_response);
    // Owned: a borrowed name here trips a higher-ranked lifetime bound in warp.
    let service = name.to_owned();
    let span_service = name.to_owned();
    let routes = warp::any()
        .map(std::time::Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(answered)
        .map(
            move |started: std::time::Instant,
                  method: warp::http::Method,
                  path: warp::path::FullPath,
                  response: warp::reply::Response| {
                shop_actors::metrics::metrics().http_request(
                    &service,
                    method.as_str(),
                    path.as_str(),
                    response.status().as_u16(),
                    started.elapsed(),
                );
                response
            },
        )
        .with(warp::trace(move |info: warp::trace::Info<'_>| {
            request_span(&span_service, &info)
        }));
    tokio::spawn(async move {
        warp::serve(routes)
            .incoming(listener)
            .graceful(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .run()
            .await;
    })
}

/// The span of one request: a child of the caller's `traceparent` header
/// when it sends a valid one, else the root of a new trace. Everything the
/// request causes (its outbox rows, so the saga's messages) joins it.
fn request_span(service: &str, info: &warp::trace::Info<'_>) -> tracing::Span {
    use shop_actors::trace::{self, TraceParent};
    let span = tracing::info_span!(
        parent: None,
        "request",
        otel.name = %format_args!("{} {service}", info.method()),
        otel.kind = "server",
        service,
        method = %info.method(),
        path = info.path(),
        trace_id = tracing::field::Empty,
    );
    let parent = info
        .request_headers()
        .get(trace::HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| TraceParent::parse(value).ok());
    trace::adopt(&span, parent.as_ref());
    span
}

/// Binds `addr` (port 0 picks a free port) and reports the bound address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
