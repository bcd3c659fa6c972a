//! Routes of the gateway: `GET /ws` upgrades to a WebSocket speaking the
//! subscription protocol (`docs/events.md`). The caller is authenticated
//! before the upgrade: a browser cannot set headers on a WebSocket, so the
//! token comes as a subprotocol — the client offers `shop.v1` and
//! `bearer.<token>`, and the server selects `shop.v1` — or, for other
//! clients, in `Authorization: Bearer`. `?order_id=` (with an optional
//! `last_seq`) subscribes to one order at once.

use super::error::ApiError;
use crate::auth::{bearer_token, Authenticator, Principal};
use shop_actors::gateway::{ClientMessage, Gateway};
use std::collections::HashMap;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use uuid::Uuid;
use warp::hyper::upgrade::OnUpgrade;
use warp::{Filter, Rejection, Reply};

/// The protocol the server speaks, selected when the client offers it.
const PROTOCOL: &str = "shop.v1";
/// Prefix of the subprotocol that carries the token.
const BEARER_PROTOCOL: &str = "bearer.";

/// Every gateway route.
pub fn routes(
    gateway: Gateway,
    auth: Authenticator,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("ws")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("sec-websocket-protocol"))
        .and_then(
            move |authorization: Option<String>, protocols: Option<String>| {
                let auth = auth.clone();
                async move { authenticate(&auth, authorization, protocols) }
            },
        )
        .and(
            warp::query::<HashMap<String, String>>()
                .and_then(|query: HashMap<String, String>| async move { initial_request(&query) }),
        )
        .and(websocket_upgrade())
        .and(warp::any().map(move || gateway.clone()))
        .map(
            |(principal, token, select): (Principal, String, bool),
             initial: Option<ClientMessage>,
             (accept, on_upgrade): (String, OnUpgrade),
             gateway: Gateway| {
                gateway.upgrade(on_upgrade, principal, token, initial);
                let mut response = warp::http::Response::builder()
                    .status(warp::http::StatusCode::SWITCHING_PROTOCOLS)
                    .header("upgrade", "websocket")
                    .header("connection", "upgrade")
                    .header("sec-websocket-accept", accept);
                if select {
                    response = response.header("sec-websocket-protocol", PROTOCOL);
                }
                response
                    .body(warp::hyper::body::Bytes::new().into())
                    .unwrap_or_else(|_| {
                        warp::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    })
            },
        )
}

/// A WebSocket handshake (RFC 6455 §4.2.1), accepted here rather than with
/// `warp::ws()` because warp cannot size tungstenite's buffers, which
/// otherwise take 128 KiB of every connection: yields the
/// `Sec-WebSocket-Accept` answer and the connection's upgrade.
fn websocket_upgrade() -> impl Filter<Extract = ((String, OnUpgrade),), Error = Rejection> + Clone {
    warp::header::optional::<String>("connection")
        .and(warp::header::optional::<String>("upgrade"))
        .and(warp::header::optional::<String>("sec-websocket-version"))
        .and(warp::header::optional::<String>("sec-websocket-key"))
        .and(warp::ext::optional::<OnUpgrade>())
        .and_then(
            |connection: Option<String>,
             upgrade: Option<String>,
             version: Option<String>,
             key: Option<String>,
             on_upgrade: Option<OnUpgrade>| async move {
                let has = |value: &Option<String>, token: &str| {
                    value
                        .as_deref()
                        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                };
                if !has(&connection, "upgrade") || !has(&upgrade, "websocket") {
                    return Err(ApiError::BadRequest(
                        "GET /ws is a WebSocket: send Connection: Upgrade and Upgrade: websocket"
                            .into(),
                    )
                    .into());
                }
                if version.as_deref().map(str::trim) != Some("13") {
                    return Err(ApiError::BadRequest(
                        "unsupported WebSocket version: send Sec-WebSocket-Version: 13".into(),
                    )
                    .into());
                }
                let Some(key) = key.filter(|k| !k.trim().is_empty()) else {
                    return Err(ApiError::BadRequest("Sec-WebSocket-Key is missing".into()).into());
                };
                let Some(on_upgrade) = on_upgrade else {
                    return Err(ApiError::BadRequest(
                        "this connection cannot be upgraded (HTTP/1.1 only)".into(),
                    )
                    .into());
                };
                Ok::<_, Rejection>((derive_accept_key(key.trim().as_bytes()), on_upgrade))
            },
        )
}

/// The caller, their token, and whether to select [`PROTOCOL`].
fn authenticate(
    auth: &Authenticator,
    authorization: Option<String>,
    protocols: Option<String>,
) -> Result<(Principal, String, bool), Rejection> {
    let offered: Vec<&str> = protocols
        .as_deref()
        .map(|p| p.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let token = offered
        .iter()
        .find_map(|p| p.strip_prefix(BEARER_PROTOCOL))
        .or_else(|| authorization.as_deref().and_then(bearer_token))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized(format!(
                "a bearer token is required: offer the subprotocols {PROTOCOL} and \
                 {BEARER_PROTOCOL}<token>, or send Authorization: Bearer <token>"
            ))
        })?;
    let principal = auth
        .verify(token)
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    Ok((principal, token.to_owned(), offered.contains(&PROTOCOL)))
}

/// The subscription `?order_id=…[&last_seq=…]` asks for, if any.
fn initial_request(query: &HashMap<String, String>) -> Result<Option<ClientMessage>, Rejection> {
    let Some(raw) = query.get("order_id") else {
        return Ok(None);
    };
    let order_id = Uuid::parse_str(raw.trim())
        .map_err(|_| ApiError::BadRequest(format!("order_id: {raw:?} is not a UUID")))?;
    let last_seq = match query.get("last_seq") {
        None => None,
        Some(raw) => Some(
            raw.trim()
                .parse::<i32>()
                .ok()
                .filter(|s| *s >= 0)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("last_seq: {raw:?} is not a number >= 0"))
                })?,
        ),
    };
    Ok(Some(ClientMessage::Subscribe {
        order_id: Some(order_id),
        last_seq,
        scope: None,
    }))
}
