//! Redis plumbing: the connection pool and key naming. Redis is only ever a
//! cache here; every caller falls back to Postgres when it is unavailable.

use bb8_redis::RedisConnectionManager;
use std::time::Duration;

/// A pool of multiplexed Redis connections.
pub type RedisPool = bb8::Pool<RedisConnectionManager>;

/// Builds a pool without connecting: the services start (and report
/// not-ready) even while Redis is down.
pub fn pool(url: &str) -> Result<RedisPool, redis::RedisError> {
    let manager = RedisConnectionManager::new(url)?;
    Ok(bb8::Pool::builder()
        .max_size(8)
        .connection_timeout(Duration::from_millis(500))
        .build_unchecked(manager))
}

/// Checks that Redis answers, for readiness probes.
pub async fn ping(pool: &RedisPool) -> Result<(), String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut *conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
