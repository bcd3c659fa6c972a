//! `Idempotency-Key` for `POST /orders`, after the IETF httpapi draft
//! "The Idempotency-Key HTTP Header Field": a client that may retry sends a
//! key, and a retry gets the first answer again instead of a second order.
//!
//! Each key is a row of `orders.idempotency_keys`. The first request with a
//! key *claims* it: the row is inserted IN_PROGRESS with the request body and
//! a short lock. The order's own transaction then marks it DONE with the
//! response (`repo::create` calls `complete`), so a key is DONE exactly
//! when its order exists, whatever crashes. A later request with the key:
//!
//! - with a different body is refused ([`PlaceError::KeyReused`], 422);
//! - with the same body, DONE: gets the stored response again;
//! - with the same body, IN_PROGRESS under a live lock: is refused
//!   ([`PlaceError::InProgress`], 409) — the first request is still running;
//! - with the same body, IN_PROGRESS under a lapsed lock: takes the claim
//!   over, because the first request's process died.
//!
//! A request that fails without placing its order releases its claim, so
//! the client can retry with the same key. Keys expire after a configured
//! time; an expired key counts as never used, and [`IdempotencyStore`]
//! purges expired rows.
//!
//! The lock's expiry time doubles as a fencing token: a claim remembers the
//! `locked_until` it wrote, and completing or releasing the key only works
//! while the row still has that value. A takeover writes a later one, so a
//! slow first holder that wakes up after being taken over can neither
//! create a second order nor release the new holder's claim.

use super::model::PlacedOrder;
use super::OrderError;
use crate::db::DbError;
use crate::rpc::{answer, RpcError};
use chrono::{DateTime, Utc};
use deadpool_postgres::{Pool, Transaction};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;
use std::time::Duration;
use tokio_postgres::types::Json;

/// Longest key accepted, in characters (the draft leaves it to the server).
pub const MAX_KEY_LEN: usize = 255;
/// How long a claim holds before another request with the same key may take
/// it over: well above the longest a placement can take (product lookup 3 s,
/// then the repository's 5 s deadline), so only a dead holder loses its claim.
const LOCK: Duration = Duration::from_secs(30);
/// How often expired keys are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per purge statement, so a purge never holds many row locks.
const PURGE_BATCH: i64 = 1000;
/// Tries to claim a key whose row keeps changing under us (released,
/// expired, taken over by another) before answering "in progress".
const CLAIM_ATTEMPTS: usize = 5;

/// A validated `Idempotency-Key` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a header value. The draft sends the key as a structured-field
    /// string (`"abc"`, with `\"` and `\\` escapes); a bare `abc` is taken
    /// as is, since clients often send that. Either way the key must be 1 to
    /// [`MAX_KEY_LEN`] visible ASCII characters.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim_matches([' ', '\t']);
        let key = match raw.strip_prefix('"') {
            Some(quoted) => unquote(quoted)?,
            None => raw.to_owned(),
        };
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ));
        }
        Ok(Self(key))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key in `owner`'s namespace: two customers may pick the same key
    /// without one seeing the other's order. A key never contains a space,
    /// so the last space separates the owner unambiguously.
    pub fn scoped(self, owner: &str) -> Self {
        Self(format!("{owner} {}", self.0))
    }
}

/// The rest of a structured-field string after its opening quote.
fn unquote(quoted: &str) -> Result<String, String> {
    let mut key = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('"' | '\\')) => key.push(escaped),
                _ => return Err("Idempotency-Key has an invalid escape".into()),
            },
            '"' if chars.as_str().is_empty() => return Ok(key),
            '"' => return Err("Idempotency-Key has text after its closing quote".into()),
            c => key.push(c),
        }
    }
    Err("Idempotency-Key has no closing quote".into())
}

/// A request that carries an idempotency key.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    /// The key.
    pub key: IdempotencyKey,
    /// The request body as parsed JSON. Two requests are the same when
    /// their bodies are equal as JSON (compared as `jsonb`, so key order and
    /// whitespace do not matter).
    pub body: Value,
}

/// A claim on a key, held while its request places the order.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The key.
    key: String,
    /// The row's `locked_until` as this claim wrote it: the fencing token
    /// (see the module documentation).
    token: DateTime<Utc>,
}

/// The answer to `POST /orders`, new or replayed.
#[derive(Debug, Clone)]
pub struct Placement {
    /// HTTP status: 202 for a new order, the stored one for a replay.
    pub status: u16,
    /// The order.
    pub order: PlacedOrder,
    /// True when this is the stored answer to an earlier request with the
    /// same key, not a new order.
    pub replayed: bool,
}

/// What claiming a key found.
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// The key is ours: place the order, completing the key in its
    /// transaction, or release the claim if that fails.
    Claimed(Claim),
    /// An earlier request with this key and body was answered with this.
    Replay(Placement),
    /// The key was used with a different body.
    Reused,
    /// A request with this key and body is still running.
    InProgress,
}

/// What the order's transaction stores in its key.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The claim; nothing is stored if it no longer holds.
    pub claim: Claim,
    /// The HTTP status answered.
    pub status: u16,
    /// The body answered.
    pub order: PlacedOrder,
}

/// Why placing an order failed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The order could not be placed; nothing was written, and the key (if
    /// any) was released for a retry.
    #[error(transparent)]
    Order(#[from] OrderError),
    /// The key was first used with a different request body.
    #[error("this Idempotency-Key was already used with a different request body")]
    KeyReused,
    /// Another request with the same key is being processed.
    #[error("a request with this Idempotency-Key is still being processed; retry later")]
    InProgress,
}

impl From<DbError> for PlaceError {
    fn from(e: DbError) -> Self {
        PlaceError::Order(e.into())
    }
}

impl From<RpcError> for PlaceError {
    fn from(e: RpcError) -> Self {
        PlaceError::Order(e.into())
    }
}

// So that `repo::create`, which answers with a `PlaceError`, can use `?` on
// Postgres calls like every other repository function.
impl From<tokio_postgres::Error> for PlaceError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::from(e).into()
    }
}

impl From<deadpool_postgres::PoolError> for PlaceError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError::from(e).into()
    }
}

/// The actor that claims, releases and purges keys; see the module
/// documentation. Completing a key is not here: it belongs to the order's
/// transaction in `OrderRepo`.
pub struct IdempotencyStore;

/// Arguments of [`IdempotencyStore`].
pub struct StoreArgs {
    /// Postgres.
    pub pool: Pool,
    /// How long a key is remembered after its first use.
    pub ttl: Duration,
}

/// State of a running [`IdempotencyStore`].
pub struct StoreState {
    /// Its arguments.
    args: StoreArgs,
    /// The periodic purge, stopped with the actor.
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// Messages of [`IdempotencyStore`].
pub enum IdempotencyMsg {
    /// Claims a key for a request, or says why it cannot be claimed.
    Claim {
        /// The key and the request body.
        request: IdempotentRequest,
        /// What the key's row says.
        reply: RpcReplyPort<Result<ClaimOutcome, DbError>>,
    },
    /// Gives up a claim whose request did not place its order, so that a
    /// retry can claim the key again. A no-op once the key is DONE or the
    /// claim was taken over.
    Release {
        /// The claim.
        claim: Claim,
        /// Done once deleted.
        reply: RpcReplyPort<Result<(), DbError>>,
    },
    /// Periodic: deletes expired keys.
    Purge,
}

impl Actor for IdempotencyStore {
    type Msg = IdempotencyMsg;
    type State = StoreState;
    type Arguments = StoreArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: StoreArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ticker = myself.send_interval(PURGE_EVERY, || IdempotencyMsg::Purge);
        Ok(StoreState {
            args,
            ticker: Some(ticker),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let pool = state.args.pool.clone();
        match message {
            IdempotencyMsg::Claim { request, reply } => {
                answer(reply, claim(pool, state.args.ttl, request));
            }
            IdempotencyMsg::Release { claim, reply } => answer(reply, release(pool, claim)),
            IdempotencyMsg::Purge => {
                tokio::spawn(async move {
                    match purge(pool).await {
                        Ok(0) => {}
                        Ok(purged) => tracing::debug!(purged, "purged expired idempotency keys"),
                        // The next round tries again; until then expired
                        // keys only take space, they are never used.
                        Err(error) => tracing::warn!(%error, "idempotency key purge failed"),
                    }
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(ticker) = state.ticker.take() {
            ticker.abort();
        }
        Ok(())
    }
}

/// Claims `request.key`, or finds out why it cannot be claimed.
async fn claim(
    pool: Pool,
    ttl: Duration,
    request: IdempotentRequest,
) -> Result<ClaimOutcome, DbError> {
    let client = pool.get().await?;
    let key = request.key.as_str();
    let body = &request.body;
    let (lock, ttl) = (LOCK.as_secs_f64(), ttl.as_secs_f64());
    let insert = client
        .prepare_cached(
            "INSERT INTO orders.idempotency_keys (key, request, status, locked_until, expires_at)
             VALUES ($1, $2, 'IN_PROGRESS', now() + make_interval(secs => $3), now() + make_interval(secs => $4))
             ON CONFLICT (key) DO NOTHING
             RETURNING locked_until",
        )
        .await?;
    let lookup = client
        .prepare_cached(
            "SELECT status, request = $2 AS same_request, response_status, response_body,
                    locked_until < now() AS lock_lapsed, expires_at < now() AS expired
             FROM orders.idempotency_keys WHERE key = $1",
        )
        .await?;
    let expire = client
        .prepare_cached("DELETE FROM orders.idempotency_keys WHERE key = $1 AND expires_at < now()")
        .await?;
    // Conditional, so that of several requests finding the same lapsed lock
    // exactly one takes it over.
    let take_over = client
        .prepare_cached(
            "UPDATE orders.idempotency_keys SET locked_until = now() + make_interval(secs => $3)
             WHERE key = $1 AND request = $2 AND status = 'IN_PROGRESS'
               AND locked_until < now() AND expires_at >= now()
             RETURNING locked_until",
        )
        .await?;
    let claimed = |token| {
        ClaimOutcome::Claimed(Claim {
            key: key.to_owned(),
            token,
        })
    };
    for _ in 0..CLAIM_ATTEMPTS {
        if let Some(row) = client
            .query_opt(&insert, &[&key, body, &lock, &ttl])
            .await?
        {
            return Ok(claimed(row.try_get(0)?));
        }
        let Some(row) = client.query_opt(&lookup, &[&key, body]).await? else {
            // Released or purged since the insert: claim it afresh.
            continue;
        };
        if row.try_get("expired")? {
            client.execute(&expire, &[&key]).await?;
            continue;
        }
        if !row.try_get::<_, bool>("same_request")? {
            return Ok(ClaimOutcome::Reused);
        }
        if row.try_get::<_, &str>("status")? == "DONE" {
            let status: i32 = row.try_get("response_status")?;
            let Json(order) = row.try_get("response_body")?;
            return Ok(ClaimOutcome::Replay(Placement {
                // Only ever written from a u16 by `complete`.
                status: u16::try_from(status).unwrap_or(202),
                order,
                replayed: true,
            }));
        }
        if !row.try_get::<_, bool>("lock_lapsed")? {
            return Ok(ClaimOutcome::InProgress);
        }
        if let Some(row) = client.query_opt(&take_over, &[&key, body, &lock]).await? {
            tracing::info!(key, "took over an abandoned idempotency key");
            return Ok(claimed(row.try_get(0)?));
        }
        // Someone else took it over or finished it first: look again.
    }
    Ok(ClaimOutcome::InProgress)
}

/// Deletes `claim`'s row if it is still IN_PROGRESS under this claim.
async fn release(pool: Pool, claim: Claim) -> Result<(), DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "DELETE FROM orders.idempotency_keys
             WHERE key = $1 AND status = 'IN_PROGRESS' AND locked_until = $2",
        )
        .await?;
    client
        .execute(&statement, &[&claim.key, &claim.token])
        .await?;
    Ok(())
}

/// Marks the key DONE with its response, inside the transaction that
/// creates the order. Returns false, and stores nothing, when the claim no
/// longer holds (taken over, released or purged): the caller must then roll
/// back, since the key belongs to another request now.
pub(super) async fn complete(
    tx: &Transaction<'_>,
    completion: &Completion,
) -> Result<bool, DbError> {
    let statement = tx
        .prepare_cached(
            "UPDATE orders.idempotency_keys
             SET status = 'DONE', response_status = $3, response_body = $4
             WHERE key = $1 AND status = 'IN_PROGRESS' AND locked_until = $2",
        )
        .await?;
    let updated = tx
        .execute(
            &statement,
            &[
                &completion.claim.key,
                &completion.claim.token,
                &i32::from(completion.status),
                &Json(&completion.order),
            ],
        )
        .await?;
    Ok(updated == 1)
}

/// Deletes every expired key, a batch at a time; returns how many.
async fn purge(pool: Pool) -> Result<u64, DbError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "DELETE FROM orders.idempotency_keys WHERE key IN (
                 SELECT key FROM orders.idempotency_keys WHERE expires_at < now() LIMIT $1)",
        )
        .await?;
    let mut purged = 0;
    loop {
        let deleted = client.execute(&statement, &[&PURGE_BATCH]).await?;
        purged += deleted;
        if deleted < PURGE_BATCH.unsigned_abs() {
            return Ok(purged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> Result<String, String> {
        IdempotencyKey::parse(raw).map(|k| k.as_str().to_owned())
    }

    #[test]
    fn quoted_and_bare_keys_name_the_same_key() {
        assert_eq!(key("abc-123"), Ok("abc-123".into()));
        assert_eq!(key("\"abc-123\""), Ok("abc-123".into()));
        assert_eq!(key(" \"abc-123\" "), Ok("abc-123".into()));
        assert_eq!(key(r#""a\"b\\c""#), Ok(r#"a"b\c"#.into()));
        assert_eq!(key(&"k".repeat(MAX_KEY_LEN)).map(|k| k.len()), Ok(255));
    }

    #[test]
    fn keys_that_are_not_1_to_255_visible_characters_are_refused() {
        for raw in [
            "",
            "\"\"",
            "   ",
            "has space",
            "\"has space\"",
            "tab\there",
            "caf\u{e9}",
            "\"open",
            "\"bad\\escape\"",
            "\"closed\"early",
        ] {
            assert!(key(raw).is_err(), "{raw:?} accepted");
        }
        assert!(key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
    }
}
