//! What every service's actor tree is built from: the shared infrastructure
//! handles ([`Infra`]), the root supervisor, and the outbox relay and Kafka
//! consumer children that every service has.

use crate::cache::RedisPool;
use crate::kafka::{ConsumerArgs, EventConsumer, EventHandler, KafkaSettings, Subscription};
use crate::outbox::{OutboxNotifier, OutboxRelay, RelayArgs, RelayMsg};
use crate::supervisor::{self, ChildKind, ServiceSupervisor, StartFn, SupervisorMsg};
use crate::StartError;
use deadpool_postgres::Pool;
use ractor::{Actor, ActorRef};
use rdkafka::producer::FutureProducer;
use std::sync::Arc;
use std::time::Duration;

/// Connections and settings shared by the services of one process.
#[derive(Clone)]
pub struct Infra {
    /// Postgres pool (all schemas live in one database).
    pub pool: Pool,
    /// Redis pool.
    pub redis: RedisPool,
    /// Prefix for every Redis key.
    pub redis_prefix: String,
    /// Kafka settings, for consumers.
    pub kafka: KafkaSettings,
    /// One idempotent producer per process, shared by every outbox relay.
    pub producer: FutureProducer,
    /// How often an idle outbox relay looks for rows.
    pub outbox_poll: Duration,
}

/// A started service: its root supervisor and the task that ends with it.
pub struct RunningService {
    /// The service's name.
    pub name: &'static str,
    /// Root of the service's actor tree.
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Completes when the supervisor has stopped.
    pub stopped: tokio::task::JoinHandle<()>,
}

impl RunningService {
    /// Spawns the (childless) root supervisor of service `name`.
    pub async fn start(name: &'static str) -> Result<Self, StartError> {
        let (supervisor, stopped) = Actor::spawn(None, ServiceSupervisor, name).await?;
        Ok(Self {
            name,
            supervisor,
            stopped,
        })
    }

    /// Stops the tree (children first, so consumers commit and relays
    /// drain) and waits up to `grace` for it.
    pub async fn stop(self, grace: Duration) {
        let _ = crate::rpc::ask(&self.supervisor, "supervisor", grace, |reply| {
            SupervisorMsg::ShutDown { reply }
        })
        .await;
        for child in self.supervisor.get_children() {
            let _ = child.stop_and_wait(None, Some(grace)).await;
        }
        let _ = self
            .supervisor
            .stop_and_wait(None, Some(Duration::from_secs(1)))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stopped).await;
    }
}

/// The HTTP client one service uses to call another (the order service
/// pricing with the product service, the gateway reading orders): short
/// timeouts, so a slow peer is an error the caller can answer, not a hang.
pub fn peer_client(base_url: &str) -> (reqwest::Client, String) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        // Under the servers' idle timeout (`HTTP_HEADER_TIMEOUT_SECONDS`,
        // 10 s by default): the client lets an idle connection go first, so
        // a request never races the server closing it.
        .pool_idle_timeout(Duration::from_secs(4))
        .build()
        .unwrap_or_default();
    (http, base_url.trim_end_matches('/').to_owned())
}

/// Starts the outbox relay of `schema` under `supervisor`; returns the
/// notifier writers use to wake it.
pub async fn start_relay(
    supervisor: &ActorRef<SupervisorMsg>,
    infra: &Infra,
    schema: &'static str,
) -> Result<OutboxNotifier, StartError> {
    let (relay, _) = Actor::spawn_linked(
        None,
        OutboxRelay,
        RelayArgs {
            pool: infra.pool.clone(),
            producer: infra.producer.clone(),
            schema,
            topic_prefix: infra.kafka.topic_prefix.clone(),
            poll_interval: infra.outbox_poll,
        },
        supervisor.get_cell(),
    )
    .await?;
    supervisor::adopt(
        supervisor,
        relay.get_cell(),
        "outbox-relay",
        ChildKind::Essential,
    )
    .await?;
    let notifier = crate::rpc::ask(
        &relay,
        "outbox relay",
        crate::rpc::DEFAULT_TIMEOUT,
        RelayMsg::Notifier,
    )
    .await?;
    Ok(notifier)
}

/// Starts a restartable Kafka consumer under `supervisor`. It dead-letters
/// what it cannot handle through the process's shared producer.
pub async fn start_consumer<H: EventHandler>(
    supervisor: &ActorRef<SupervisorMsg>,
    infra: &Infra,
    subscription: Subscription,
    topics: Vec<&'static str>,
    handler: Arc<H>,
    rebalance: Option<Arc<dyn crate::kafka::RebalanceListener>>,
) -> Result<(), StartError> {
    let settings = infra.kafka.clone();
    let producer = infra.producer.clone();
    let start: StartFn = Arc::new(move |cell| {
        let args = ConsumerArgs {
            settings: settings.clone(),
            subscription: subscription.clone(),
            topics: topics.clone(),
            handler: handler.clone(),
            producer: producer.clone(),
            rebalance: rebalance.clone(),
        };
        Box::pin(async move {
            let (consumer, _) =
                Actor::spawn_linked(None, EventConsumer::<H>::default(), args, cell).await?;
            Ok(consumer.get_cell())
        })
    });
    supervisor::start_restartable(supervisor, "kafka-consumer", start).await
}
