//! Routes of the gateway: `GET /ws` upgrades to a WebSocket speaking the
//! subscription protocol (`docs/events.md`). The caller is authenticated
//! before the upgrade: a browser cannot set headers on a WebSocket, so the
//! token comes as a subprotocol — the client offers `shop.v1` and
//! `bearer.<token>`, and the server selects `shop.v1` — or, for other
//! clients, in `Authorization: Bearer`. `?order_id=` (with an optional
//! `last_seq`) subscribes to one order at once.
//!
//! The session lasts as long as the token would be accepted over HTTP (its
//! `exp` plus the same leeway); a subject with `WS_MAX_CONNECTIONS_PER_SUBJECT`
//! connections open is refused with a JSON `429` before the upgrade.

use super::error::{error_response, ApiError};
use crate::auth::{bearer_token, Authenticator};
use shop_actors::gateway::{Admission, ClientMessage, Gateway, Session, TokenVerifier};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use uuid::Uuid;
use warp::hyper::upgrade::OnUpgrade;
use warp::{Filter, Rejection, Reply};

/// The protocol the server speaks, selected when the client offers it.
const PROTOCOL: &str = "shop.v1";
/// Prefix of the subprotocol that carries the token.
const BEARER_PROTOCOL: &str = "bearer.";
/// How long past its `exp` a session lasts: the clock skew `shop::auth`
/// tolerates on `exp` (its `LEEWAY_SECONDS`; a test below checks the two
/// agree), so a token refused over HTTP ends its WebSocket sessions too.
const SESSION_LEEWAY: Duration = Duration::from_secs(30);

/// Checks tokens for sessions: the HTTP layer's keys, and the token's end.
#[derive(Clone)]
struct Sessions(Authenticator);

impl TokenVerifier for Sessions {
    fn verify(&self, token: &str) -> Result<Session, String> {
        self.session(token).map_err(|e| e.to_string())
    }
}

impl Sessions {
    /// The session `token` opens: verified, and ending at `exp` plus the leeway.
    fn session(&self, token: &str) -> Result<Session, crate::auth::AuthError> {
        #[derive(serde::Deserialize)]
        struct Expiry {
            exp: u64,
        }
        let principal = self.0.verify(token)?;
        // Verified just now (so `exp` is there); read it back for the end.
        let exp = jsonwebtoken::dangerous::insecure_decode_claims::<Expiry>(token)
            .map_err(|e| crate::auth::AuthError::Invalid(e.to_string()))?
            .exp;
        Ok(Session {
            principal,
            token: token.to_owned(),
            ends_at: UNIX_EPOCH + Duration::from_secs(exp) + SESSION_LEEWAY,
        })
    }
}

/// Every gateway route.
pub fn routes(
    gateway: Gateway,
    auth: Authenticator,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let sessions = Sessions(auth);
    let verifier: Arc<dyn TokenVerifier> = Arc::new(sessions.clone());
    warp::path!("ws")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("sec-websocket-protocol"))
        .and_then(
            move |authorization: Option<String>, protocols: Option<String>| {
                let sessions = sessions.clone();
                async move { authenticate(&sessions, authorization, protocols) }
            },
        )
        .and(
            warp::query::<HashMap<String, String>>()
                .and_then(|query: HashMap<String, String>| async move { initial_request(&query) }),
        )
        .and(websocket_upgrade())
        .and(warp::any().map(move || gateway.clone()))
        .map(
            move |(session, select): (Session, bool),
                  initial: Option<ClientMessage>,
                  (accept, on_upgrade): (String, OnUpgrade),
                  gateway: Gateway| {
                let Some(slot) = gateway.reserve(&session.principal.subject) else {
                    return error_response(
                        warp::http::StatusCode::TOO_MANY_REQUESTS,
                        "too_many_connections",
                        format!(
                            "at most {} WebSocket connections per subject are open at once; \
                             close one first",
                            gateway.per_subject()
                        ),
                    );
                };
                let admission = Admission {
                    session,
                    slot,
                    initial,
                    verifier: verifier.clone(),
                };
                gateway.upgrade(on_upgrade, admission);
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

/// The caller's session, and whether to select [`PROTOCOL`].
fn authenticate(
    sessions: &Sessions,
    authorization: Option<String>,
    protocols: Option<String>,
) -> Result<(Session, bool), Rejection> {
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
    let session = sessions
        .session(token)
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    Ok((session, offered.contains(&PROTOCOL)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use std::time::SystemTime;

    const SECRET: &[u8] = b"unit-test-secret-unit-test-secret-0123";

    #[test]
    fn the_session_leeway_is_the_one_http_authentication_allows() {
        let auth = Authenticator::from_secret(SECRET).unwrap();
        let expired = |ago: u64| {
            let token = auth
                .mint_expiring(
                    "alice",
                    Role::Customer,
                    SystemTime::now() - Duration::from_secs(ago),
                )
                .unwrap();
            auth.verify(&token).is_err()
        };
        let leeway = SESSION_LEEWAY.as_secs();
        assert!(!expired(leeway - 1), "HTTP still accepts it");
        assert!(expired(leeway + 1), "HTTP refuses it");
    }

    #[test]
    fn a_session_ends_at_the_tokens_exp_plus_the_leeway() {
        let auth = Authenticator::from_secret(SECRET).unwrap();
        let exp = SystemTime::now() + Duration::from_secs(600);
        let token = auth.mint_expiring("alice", Role::Customer, exp).unwrap();
        let session = Sessions(auth).session(&token).unwrap();
        let exp_secs = exp.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(
            session.ends_at,
            UNIX_EPOCH + Duration::from_secs(exp_secs) + SESSION_LEEWAY
        );
        assert_eq!(session.principal.subject, "alice");
    }

    #[test]
    fn a_negative_last_seq_is_refused_like_over_the_websocket() {
        let query = HashMap::from([
            ("order_id".to_owned(), uuid::Uuid::nil().to_string()),
            ("last_seq".to_owned(), "-1".to_owned()),
        ]);
        assert!(initial_request(&query).is_err());
    }
}
