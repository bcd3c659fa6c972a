//! The actor trees of shop's four services, and everything they share.
//!
//! Layout:
//! - [`events`]: the Kafka envelope, every command and event, the topics;
//!   [`asyncapi`]: their AsyncAPI document, generated from those types.
//! - [`db`], [`cache`], [`kafka`]: Postgres, Redis and Kafka plumbing,
//!   including the embedded Kafka-protocol broker.
//! - [`outbox`]: the transactional outbox, its relay actor, and the inbox of
//!   processed event ids that makes redelivery harmless.
//! - [`supervisor`], [`service`], [`rpc`], [`retry`]: how trees are built,
//!   supervised and talk to each other.
//! - [`trace`]: the W3C `traceparent` carried from request to WebSocket push.
//! - [`product`], [`order`], [`payment`], [`gateway`]: one folder per
//!   service, each with its supervisor tree documented at the top.

pub mod asyncapi;
pub mod auth;
pub mod cache;
pub mod db;
pub mod events;
pub mod gateway;
pub mod inbox;
pub mod kafka;
pub mod metrics;
pub mod order;
pub mod outbox;
pub mod payment;
pub mod product;
pub mod retry;
pub mod rpc;
pub mod service;
pub mod supervisor;
pub mod trace;

pub use service::{Infra, RunningService};

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Postgres refused or a migration failed.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// Kafka client or topic set-up failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Redis configuration is invalid.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// An actor failed to start.
    #[error("actor: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    /// An actor did not answer during start-up.
    #[error(transparent)]
    Rpc(#[from] rpc::RpcError),
}
