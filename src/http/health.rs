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
use serde::Serialize;
use shop_actors::cache::RedisPool;
use std::collections::BTreeMap;
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
    pub async fn check(&self) -> (bool, BTreeMap<String, String>) {
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
        let mut checks = BTreeMap::new();
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
                        Ok(()) => "ok".to_owned(),
                        Err(e) if required => e,
                        Err(e) => format!("degraded: {e}"),
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
    let healthz = warp::path!("healthz").and(warp::get()).map(healthz);
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(warp::any().map(move || readiness.clone()))
        .then(readyz);
    healthz.or(readyz).unify()
}

/// Health and readiness in every service's OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(healthz, readyz))]
pub struct HealthApi;

/// Answer of `GET /healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Health {
    /// Always `ok`: the process answers.
    #[schema(example = "ok")]
    status: &'static str,
}

/// Answer of `GET /readyz`, whether ready or not.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ReadinessReport {
    /// `ready` or `not_ready`.
    #[schema(example = "ready")]
    status: &'static str,
    /// Each dependency checked (`postgres`, `redis`, `kafka`) and its
    /// result: `ok`, the error, or for Redis `degraded: <error>`.
    checks: BTreeMap<String, String>,
}

/// The process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "Alive.", body = Health))
)]
fn healthz() -> warp::reply::Response {
    warp::reply::json(&Health { status: "ok" }).into_response()
}

/// Whether the service can do its work: Postgres and Kafka must answer;
/// Redis, only a cache, is reported but never makes it unready.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = ReadinessReport),
        (status = 503, description = "Not ready: a required dependency failed its check.", body = ReadinessReport),
    )
)]
async fn readyz(readiness: Readiness) -> warp::reply::Response {
    let (ready, checks) = readiness.check().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let report = ReadinessReport {
        status: if ready { "ready" } else { "not_ready" },
        checks,
    };
    warp::reply::with_status(warp::reply::json(&report), status).into_response()
}
