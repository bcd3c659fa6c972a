//! The order service: the REST entry point and the saga orchestrator.
//!
//! ```text
//! ServiceSupervisor("order")
//! ├── OrderRepo          Postgres: orders, items, history, saga state, written in
//! │                      groups (essential)
//! ├── IdempotencyStore   Postgres: Idempotency-Key claims, expiry (essential)
//! ├── OutboxRelay        orders.outbox -> commands and order-events (essential)
//! ├── SagaSupervisor     one OrderSaga per in-flight order it owns (essential)
//! │   └── OrderSaga ...
//! └── EventConsumer      inventory-events, payment-events -> SagaReplies (restartable);
//!                        its rebalances decide which orders this process owns
//! ```
//!
//! Several order processes share the load: each runs the sagas of the
//! orders whose partitions it is assigned ([`placement`]).

pub mod group;
pub mod idempotency;
pub mod machine;
pub mod model;
pub mod placement;
pub mod products;
pub mod replies;
pub mod repo;
pub mod saga;
pub mod sagas;

use crate::db::DbError;
use crate::events::{topics, OrderStatus};
use crate::kafka::Subscription;
use crate::rpc::{ask, RpcError, DEFAULT_TIMEOUT};
use crate::service::{self, Infra, RunningService};
use crate::supervisor::{self as sup, ChildKind};
use crate::StartError;
use machine::SagaState;
use model::{OrderItem, OrderSummary, OrderView, PlaceOrder, PlacedOrder, ValidOrder};
use products::ProductClient;
use ractor::{Actor, ActorRef};
use repo::{NewOrder, OrderRepoMsg};
use sagas::SagasMsg;
use std::sync::Arc;
use uuid::Uuid;

/// Why an order operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The request is invalid; nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// A product in the request does not exist; nothing was written.
    #[error("unknown product {0}")]
    UnknownProduct(Uuid),
    /// A dependency is down; nothing was written.
    #[error("{0}")]
    Unavailable(String),
}

impl From<DbError> for OrderError {
    fn from(e: DbError) -> Self {
        OrderError::Unavailable(e.to_string())
    }
}

impl From<RpcError> for OrderError {
    fn from(e: RpcError) -> Self {
        OrderError::Unavailable(e.to_string())
    }
}

/// What the HTTP routes use; cheap to clone.
#[derive(Clone)]
pub struct Orders {
    repo: ActorRef<OrderRepoMsg>,
    sagas: ActorRef<SagasMsg>,
    products: ProductClient,
    /// Claims and releases idempotency keys.
    idempotency: ActorRef<idempotency::IdempotencyMsg>,
    /// How long a new order may wait for its stock.
    step_timeout: chrono::Duration,
    /// Which orders' sagas run here.
    placement: Arc<placement::Placement>,
    /// Wakes the outbox relay once an order is committed, so its opening
    /// messages leave now rather than at the relay's next poll.
    outbox: crate::outbox::OutboxNotifier,
}

impl Orders {
    /// Validates, prices and stores an order, then starts its saga. With an
    /// idempotency key, a repeat of an answered request gets the same answer
    /// and no second order (see [`idempotency`]).
    pub async fn place(
        &self,
        request: PlaceOrder,
        idempotent: Option<idempotency::IdempotentRequest>,
    ) -> Result<idempotency::Placement, idempotency::PlaceError> {
        use idempotency::{ClaimOutcome, IdempotencyMsg, PlaceError, Placement};
        // Invalid input is refused before the key is claimed: it is never
        // stored (Postgres refuses a NUL even inside jsonb, which answered
        // 503 before), and a retry with a corrected body may use the key.
        let order = request.validate().map_err(OrderError::Invalid)?;
        let claim = match idempotent {
            None => None,
            Some(request) => {
                match ask(
                    &self.idempotency,
                    "idempotency store",
                    DEFAULT_TIMEOUT,
                    |reply| IdempotencyMsg::Claim { request, reply },
                )
                .await??
                {
                    ClaimOutcome::Claimed(claim) => Some(claim),
                    ClaimOutcome::Replay(placement) => {
                        let order_id = placement.order.order_id;
                        tracing::info!(%order_id, "order request repeated; answered from its key");
                        return Ok(placement);
                    }
                    ClaimOutcome::Reused => return Err(PlaceError::KeyReused),
                    ClaimOutcome::InProgress => return Err(PlaceError::InProgress),
                }
            }
        };
        match self.place_new(order, claim.clone()).await {
            Ok(order) => Ok(Placement {
                status: warp::http::StatusCode::ACCEPTED.as_u16(),
                order,
                replayed: false,
            }),
            Err(error) => {
                if let Some(claim) = claim {
                    // Free the key for a retry. Only this request's own
                    // IN_PROGRESS claim is deleted: if the order committed
                    // after all (its answer came too late), the key is DONE
                    // and stays.
                    let released = ask(
                        &self.idempotency,
                        "idempotency store",
                        DEFAULT_TIMEOUT,
                        |reply| IdempotencyMsg::Release { claim, reply },
                    )
                    .await;
                    // Unreleased, the claim lapses with its lock and a retry
                    // takes it over then.
                    match released {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::warn!(%error, "idempotency key not released"),
                        Err(error) => tracing::warn!(%error, "idempotency key not released"),
                    }
                }
                Err(error)
            }
        }
    }

    /// [`Orders::place`] once the key, if any, is claimed: completes the
    /// key in the order's transaction.
    async fn place_new(
        &self,
        order: ValidOrder,
        claim: Option<idempotency::Claim>,
    ) -> Result<PlacedOrder, idempotency::PlaceError> {
        let ids: Vec<Uuid> = order.lines.iter().map(|(id, _)| *id).collect();
        let products = self
            .products
            .get_many(&ids)
            .await
            .map_err(|e| OrderError::Unavailable(e.to_string()))?;
        let mut items = Vec::with_capacity(order.lines.len());
        for (product_id, quantity) in &order.lines {
            let product = products
                .iter()
                .find(|p| p.id == *product_id)
                .ok_or(OrderError::UnknownProduct(*product_id))?;
            items.push(OrderItem {
                product_id: *product_id,
                name: product.name.clone(),
                quantity: *quantity,
                unit_price_cents: product.price_cents,
            });
        }
        let total_cents = items
            .iter()
            .map(|i| i.unit_price_cents * i64::from(i.quantity))
            .sum();
        let saga = SagaState {
            deadline_at: Some(chrono::Utc::now() + self.step_timeout),
            attempts: 0,
            order_id: Uuid::now_v7(),
            customer_id: order.customer_id,
            correlation_id: Uuid::new_v4(),
            status: OrderStatus::Pending,
            reason: None,
            seq: 1,
            items: items
                .iter()
                .map(|i| crate::events::OrderLine {
                    product_id: i.product_id,
                    quantity: i.quantity,
                })
                .collect(),
            total_cents,
            currency: "EUR".into(),
            payment_token: order.payment_token,
        };
        let order_id = saga.order_id;
        let placed = PlacedOrder {
            order_id,
            status: OrderStatus::Pending,
        };
        let idempotency = claim.map(|claim| idempotency::Completion {
            claim,
            status: warp::http::StatusCode::ACCEPTED.as_u16(),
            order: placed.clone(),
        });
        ask(&self.repo, "order repo", DEFAULT_TIMEOUT, |reply| {
            OrderRepoMsg::Create {
                order: NewOrder {
                    saga: saga.clone(),
                    items,
                    idempotency,
                    trace: crate::trace::TraceParent::current(),
                },
                reply,
            }
        })
        .await??;
        self.outbox.wake();
        tracing::info!(%order_id, total_cents, "order placed");
        // The order is durable; if this message is lost, the first reply
        // starts the saga from Postgres instead.
        let _ = self.sagas.send_message(SagasMsg::Begin { state: saga });
        Ok(placed)
    }

    /// One order with items and history.
    pub async fn get(&self, order_id: Uuid) -> Result<Option<OrderView>, OrderError> {
        Ok(ask(&self.repo, "order repo", DEFAULT_TIMEOUT, |reply| {
            OrderRepoMsg::Get { order_id, reply }
        })
        .await??)
    }

    /// A customer's most recent orders.
    pub async fn list(
        &self,
        customer_id: String,
        limit: i64,
    ) -> Result<Vec<OrderSummary>, OrderError> {
        Ok(ask(&self.repo, "order repo", DEFAULT_TIMEOUT, |reply| {
            OrderRepoMsg::ListByCustomer {
                customer_id,
                limit,
                reply,
            }
        })
        .await??)
    }

    /// Sagas an operator should look at: FAILED, or overdue by more than
    /// `grace_seconds`.
    pub async fn stuck(&self, grace_seconds: f64) -> Result<Vec<repo::StuckSaga>, OrderError> {
        Ok(ask(&self.repo, "order repo", DEFAULT_TIMEOUT, |reply| {
            OrderRepoMsg::ListStuck {
                grace_seconds,
                reply,
            }
        })
        .await??)
    }

    /// The orders whose sagas run in this process, and the partitions it owns.
    pub async fn running_sagas(&self) -> Result<(placement::Ownership, Vec<Uuid>), OrderError> {
        let running = ask(&self.sagas, "saga supervisor", DEFAULT_TIMEOUT, |reply| {
            SagasMsg::Running { reply }
        })
        .await?;
        Ok((self.placement.snapshot(), running))
    }
}

/// The running order service.
pub struct OrderService {
    /// Its supervisor.
    pub service: RunningService,
    /// What the HTTP routes use.
    pub orders: Orders,
}

/// How the order service is set up.
#[derive(Debug, Clone)]
pub struct OrderConfig {
    /// The product service's base URL, for pricing orders.
    pub product_url: String,
    /// Saga deadlines and compensation retries.
    pub policy: machine::SagaPolicy,
    /// How often to look for overdue sagas nobody is watching.
    pub sweep_every: std::time::Duration,
    /// How long an `Idempotency-Key` of `POST /orders` is remembered.
    pub idempotency_ttl: std::time::Duration,
}

/// Starts the order service's actor tree.
pub async fn start(infra: &Infra, config: &OrderConfig) -> Result<OrderService, StartError> {
    let product_url = config.product_url.as_str();
    let service = RunningService::start("order").await?;
    let supervisor = &service.supervisor;
    let (repo, _) = Actor::spawn_linked(
        None,
        repo::OrderRepo,
        infra.pool.clone(),
        supervisor.get_cell(),
    )
    .await?;
    sup::adopt(
        supervisor,
        repo.get_cell(),
        "order-repo",
        ChildKind::Essential,
    )
    .await?;
    let (idempotency, _) = Actor::spawn_linked(
        None,
        idempotency::IdempotencyStore,
        idempotency::StoreArgs {
            pool: infra.pool.clone(),
            ttl: config.idempotency_ttl,
        },
        supervisor.get_cell(),
    )
    .await?;
    sup::adopt(
        supervisor,
        idempotency.get_cell(),
        "idempotency-store",
        ChildKind::Essential,
    )
    .await?;
    let outbox = service::start_relay(supervisor, infra, "orders").await?;
    // Replies of an order share its partition number on both topics.
    let placement = Arc::new(placement::Placement::new(
        infra.kafka.topic(topics::INVENTORY_EVENTS),
    ));
    let (sagas, _) = Actor::spawn_linked(
        None,
        sagas::SagaSupervisor,
        sagas::SagasArgs {
            repo: repo.clone(),
            outbox: outbox.clone(),
            policy: config.policy,
            sweep_every: config.sweep_every,
            placement: placement.clone(),
        },
        supervisor.get_cell(),
    )
    .await?;
    sup::adopt(
        supervisor,
        sagas.get_cell(),
        "saga-supervisor",
        ChildKind::Essential,
    )
    .await?;
    placement.notify(sagas.clone());
    service::start_consumer(
        supervisor,
        infra,
        Subscription::Group {
            group_id: "order".into(),
        },
        vec![topics::INVENTORY_EVENTS, topics::PAYMENT_EVENTS],
        Arc::new(replies::SagaReplies {
            sagas: sagas.clone(),
        }),
        Some(placement.clone()),
    )
    .await?;
    Ok(OrderService {
        service,
        orders: Orders {
            repo,
            sagas,
            products: ProductClient::new(product_url),
            idempotency,
            step_timeout: chrono::Duration::from_std(config.policy.step_timeout)
                .unwrap_or(chrono::Duration::MAX),
            placement,
            outbox,
        },
    })
}
