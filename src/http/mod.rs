//! HTTP for every service: the filters shared by all (JSON bodies with a
//! size limit and a time limit, health and readiness, `/metrics`,
//! `/openapi.json`, CORS), one module of routes per service (the gateway's
//! storefront page included), request metrics, and the server loop
//! ([`server`]) with its connection bounds and graceful shutdown.

pub mod admin;
pub mod cors;
pub mod error;
pub mod gateway;
pub mod health;
pub mod labels;
pub mod openapi;
pub mod order;
pub mod product;
pub mod server;
pub mod storefront;

use error::ApiError;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use tokio::sync::watch;
use warp::{Filter, Rejection, Reply};

/// Largest request body accepted, in bytes.
pub const MAX_BODY: u64 = 64 * 1024;

/// A JSON body of at most [`MAX_BODY`] bytes, sent as `application/json`,
/// with or without a `content-length` (a chunked body is read up to the
/// limit), and read within the server's body timeout ([`server::BodyTimeout`]).
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
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::ext::optional::<server::BodyTimeout>())
        .and(warp::body::stream())
        .and_then(
            |length: Option<u64>, timeout: Option<server::BodyTimeout>, body| async move {
                if length.is_some_and(|length| length > MAX_BODY) {
                    return Err(Rejection::from(too_large()));
                }
                let timeout = timeout.unwrap_or(server::BodyTimeout(std::time::Duration::MAX));
                let bytes = match tokio::time::timeout(timeout.0, read_body(body)).await {
                    Ok(read) => read?,
                    Err(_) => {
                        return Err(Rejection::from(ApiError::RequestTimeout(format!(
                            "the request body did not arrive within {} s",
                            timeout.0.as_secs()
                        ))))
                    }
                };
                serde_json::from_slice::<T>(&bytes).map_err(|e| {
                    Rejection::from(ApiError::MalformedJson(format!(
                        "request body is not valid: {e}"
                    )))
                })
            },
        )
}

/// The answer to a body over [`MAX_BODY`].
fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(format!("request body is larger than {MAX_BODY} bytes"))
}

/// Reads `body` whole, refusing it once it passes [`MAX_BODY`].
async fn read_body<S, B>(body: S) -> Result<Vec<u8>, ApiError>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: warp::Buf,
{
    use futures::StreamExt;
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        if bytes.len() as u64 + chunk.remaining() as u64 > MAX_BODY {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(bytes)
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

/// Serves `routes` (plus `/metrics`) on `listener` within `limits`, sharing
/// `connections` with the process's other servers, until `shutdown` turns
/// true; returns the task running the server.
pub fn serve(
    name: &'static str,
    routes: warp::filters::BoxedFilter<(warp::reply::Response,)>,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
    limits: server::Limits,
    connections: server::Connections,
) -> tokio::task::JoinHandle<()> {
    // Every answer, errors included, counted and timed (the server loop
    // gives each request its span).
    let answered = metrics_route()
        .or(openapi::route(name))
        .unify()
        .or(routes)
        .unify()
        .recover(error::recover)
        .map(Reply::into_response);
    // Owned: a borrowed name here trips a higher-ranked lifetime bound in warp.
    let service = name.to_owned();
    let extra: &[&str] = if name == "gateway" { &["/ws"] } else { &[] };
    let labels = std::sync::Arc::new(labels::Routes::of(name, extra));
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
                    labels.label(path.as_str()),
                    response.status().as_u16(),
                    started.elapsed(),
                );
                response
            },
        );
    tokio::spawn(server::run(
        name,
        routes,
        listener,
        shutdown,
        limits,
        connections,
    ))
}

/// The span of one request: a child of the caller's `traceparent` header
/// when it sends a valid one, else the root of a new trace. Everything the
/// request causes (its outbox rows, so the saga's messages) joins it.
pub(crate) fn request_span<B>(service: &str, request: &warp::http::Request<B>) -> tracing::Span {
    use shop_actors::trace::{self, TraceParent};
    let method = request.method();
    let span = tracing::info_span!(
        parent: None,
        "request",
        otel.name = %format_args!("{method} {service}"),
        otel.kind = "server",
        service,
        method = %method,
        path = request.uri().path(),
        trace_id = tracing::field::Empty,
    );
    let parent = request
        .headers()
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
