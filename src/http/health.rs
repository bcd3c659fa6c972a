//! `GET /healthz` (the process answers) and `GET /readyz` (its Postgres,
//! Redis and Kafka connections work), for probes and operators.
//!
//! Postgres and Kafka are required: without them a service cannot do its
//! work, so it reports not-ready (503) until they return. Redis is only a
//! cache — every API keeps answering from Postgres without it — so its
//! check is reported (`"redis": "degraded: …"`) but does not make the
//! service unready, which would take a working service out of rotation.

use deadpool_postgres::Pool;
use rdkafka::producer::{FutureProducer, Producer};
use serde_json::json;
use shop_actors::cache::RedisPool;
use std::time::Duration;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// How long each readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The dependencies a service's readiness depends on.
#[derive(Clone, Default)]
pub struct Readiness {
    /// Checked with `SELECT 1` when present.
    pub postgres: Option<Pool>,
    /// Checked with `PING` when present.
    pub redis: Option<RedisPool>,
    /// Checked with a metadata request when present.
    pub kafka: Option<FutureProducer>,
}

impl Readiness {
    /// Runs every check; returns whether all passed and each one's result.
    pub async fn check(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let postgres = async {
            match &self.postgres {
                None => None,
                Some(pool) => Some(
                    bounded(async { shop_actors::db::ping(pool).await.map_err(|e| e.to_string()) })
                        .await,
                ),
            }
        };
        let redis = async {
            match &self.redis {
                None => None,
                Some(pool) => Some(bounded(shop_actors::cache::ping(pool)).await),
            }
        };
        let kafka = async {
            match &self.kafka {
                None => None,
                Some(producer) => {
                    let producer = producer.clone();
                    let probe = tokio::task::spawn_blocking(move || {
                        producer
                            .client()
                            .fetch_metadata(None, CHECK_TIMEOUT)
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    });
                    Some(bounded(async { probe.await.map_err(|e| e.to_string())? }).await)
                }
            }
        };
        let (postgres, redis, kafka) = tokio::join!(postgres, redis, kafka);
        let mut checks = serde_json::Map::new();
        let mut ready = true;
        for (name, result, required) in [
            ("postgres", postgres, true),
            ("redis", redis, false),
            ("kafka", kafka, true),
        ] {
            if let Some(result) = result {
                if required {
                    ready &= result.is_ok();
                }
                checks.insert(
                    name.into(),
                    match result {
                        Ok(()) => json!("ok"),
                        Err(e) if required => json!(e),
                        Err(e) => json!(format!("degraded: {e}")),
                    },
                );
            }
        }
        (ready, checks)
    }
}

async fn bounded(
    check: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")))
}

/// `GET /healthz` and `GET /readyz`.
pub fn routes(
    readiness: Readiness,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response());
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(warp::any().map(move || readiness.clone()))
        .then(|readiness: Readiness| async move {
            let (ready, checks) = readiness.check().await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body =
                json!({"status": if ready { "ready" } else { "not_ready" }, "checks": checks});
            warp::reply::with_status(warp::reply::json(&body), status).into_response()
        });
    healthz.or(readyz).unify()
}
