//! HTTP for every service: the filters shared by all (JSON bodies with a
//! size limit, health and readiness), one module of routes per service, and
//! the server loop with graceful shutdown.

pub mod admin;
pub mod error;
pub mod gateway;
pub mod health;
pub mod order;
pub mod product;

use error::ApiError;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use tokio::sync::watch;
use warp::{Filter, Rejection};

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

/// Serves `routes` on `listener` until `shutdown` turns true; returns the
/// task running the server.
pub fn serve(
    name: &'static str,
    routes: warp::filters::BoxedFilter<(warp::reply::Response,)>,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    // One span per request, named after the service, for the logs.
    let routes = routes
        .recover(error::recover)
        .with(warp::trace::named(name));
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

/// Binds `addr` (port 0 picks a free port) and reports the bound address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
