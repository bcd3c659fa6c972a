//! `PaymentRepo`: the payment service's Postgres repository. One
//! authorization row per order (the primary key), written in the same
//! transaction as the reply event and the processed event id, is what makes
//! a double charge impossible whatever is redelivered.

use super::tokens::{self, Outcome};
use crate::db::DbError;
use crate::events::{Envelope, Event, PaymentAuthorized, PaymentDeclined, PaymentVoided};
use crate::outbox;
use crate::rpc::answer;
use deadpool_postgres::{Pool, Transaction};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use uuid::Uuid;

const SCHEMA: &str = "payment";

/// The repository actor; see the module documentation.
pub struct PaymentRepo;

/// Messages of [`PaymentRepo`].
pub enum PaymentRepoMsg {
    /// Authorizes (or declines) each command of the batch at most once, in
    /// one transaction, with its reply appended to the outbox.
    ApplyCommands {
        /// Decoded `payment-commands` envelopes.
        batch: Vec<Envelope>,
        /// Done once committed.
        reply: RpcReplyPort<Result<(), DbError>>,
    },
}

impl Actor for PaymentRepo {
    type Msg = PaymentRepoMsg;
    type State = Pool;
    type Arguments = Pool;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        pool: Pool,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(pool)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        pool: &mut Pool,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PaymentRepoMsg::ApplyCommands { batch, reply } => {
                answer(reply, apply_commands(pool.clone(), batch))
            }
        }
        Ok(())
    }
}

/// Applies a batch of `payment-commands` in one transaction: records its
/// event ids (a redelivered one does nothing), decides each new
/// authorization or void, and appends the replies to the outbox. What the
/// consumer's handler does through [`PaymentRepo`]; public for the
/// benchmarks.
pub async fn apply_commands(pool: Pool, batch: Vec<Envelope>) -> Result<(), DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Every id of the batch recorded in one round trip, in this transaction.
    let replies = crate::inbox::apply_batch(&tx, SCHEMA, "payment", &batch, |envelope| {
        apply_command(&tx, envelope)
    })
    .await?;
    outbox::append(&tx, SCHEMA, &replies).await?;
    tx.commit().await?;
    Ok(())
}

/// Applies one command, already recorded as processed, in the batch's
/// transaction; returns its reply, or nothing for a misrouted message.
async fn apply_command(
    tx: &Transaction<'_>,
    envelope: &Envelope,
) -> Result<Option<Event>, DbError> {
    let reply = match &envelope.event {
        Event::AuthorizePayment(command) => authorize(tx, envelope.order_id, command).await?,
        Event::VoidPayment(_) => void(tx, envelope.order_id).await?,
        other => {
            tracing::warn!(
                event_type = other.type_name(),
                "not a payment command; ignored"
            );
            return Ok(None);
        }
    };
    Ok(Some(reply))
}

/// Cancels the order's authorization. A void that arrives first leaves a
/// VOIDED row, so the authorization, when it comes, is declined instead.
async fn void(tx: &Transaction<'_>, order_id: Uuid) -> Result<Event, DbError> {
    let voided = tx
        .query_opt(
            "UPDATE payment.authorizations SET status = 'VOIDED', voided_at = now()
             WHERE order_id = $1 AND status = 'AUTHORIZED' RETURNING id",
            &[&order_id],
        )
        .await?;
    if let Some(row) = voided {
        tracing::info!(%order_id, "authorization voided");
        return Ok(Event::PaymentVoided(PaymentVoided {
            authorization_id: Some(row.get(0)),
        }));
    }
    let tombstone = tx
        .query_opt(
            "INSERT INTO payment.authorizations
                 (order_id, id, customer_id, status, amount_cents, currency, payment_token, decline_code, voided_at)
             VALUES ($1, $2, '', 'VOIDED', 0, 'EUR', '', 'voided', now())
             ON CONFLICT (order_id) DO NOTHING RETURNING id",
            &[&order_id, &Uuid::now_v7()],
        )
        .await?;
    // Either there was no authorization (now there never will be), or it was
    // declined or already voided: nothing is charged either way.
    Ok(Event::PaymentVoided(PaymentVoided {
        authorization_id: if tombstone.is_some() {
            None
        } else {
            tx.query_opt(
                "SELECT id FROM payment.authorizations WHERE order_id = $1 AND status <> 'DECLINED'",
                &[&order_id],
            )
            .await?
            .map(|row| row.get(0))
        },
    }))
}

/// Decides an order's payment once; asked again, repeats the first answer.
async fn authorize(
    tx: &Transaction<'_>,
    order_id: Uuid,
    command: &crate::events::AuthorizePayment,
) -> Result<Event, DbError> {
    let existing = tx
        .prepare_cached(
            "SELECT id, status, amount_cents, decline_code FROM payment.authorizations WHERE order_id = $1",
        )
        .await?;
    let existing = tx.query_opt(&existing, &[&order_id]).await?;
    if let Some(row) = existing {
        let status: &str = row.get(1);
        return Ok(if status == "AUTHORIZED" {
            Event::PaymentAuthorized(PaymentAuthorized {
                authorization_id: row.get(0),
                amount_cents: row.get(2),
            })
        } else if status == "VOIDED" {
            // Voided before or after it was made: nothing will be charged.
            Event::PaymentDeclined(PaymentDeclined {
                decline_code: "voided".to_owned(),
            })
        } else {
            Event::PaymentDeclined(PaymentDeclined {
                decline_code: row.get::<_, Option<String>>(3).unwrap_or_default(),
            })
        });
    }
    // An unknown token cannot reach here through the API; decline it anyway.
    let outcome =
        tokens::outcome(&command.payment_token).unwrap_or(Outcome::Decline("invalid_token"));
    let authorization_id = Uuid::now_v7();
    let (status, decline_code) = match outcome {
        Outcome::Approve => ("AUTHORIZED", None),
        Outcome::Decline(code) => ("DECLINED", Some(code)),
    };
    let insert = tx
        .prepare_cached(
            "INSERT INTO payment.authorizations
                 (order_id, id, customer_id, status, amount_cents, currency, payment_token, decline_code)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    tx.execute(
        &insert,
        &[
            &order_id,
            &authorization_id,
            &command.customer_id,
            &status,
            &command.amount_cents,
            &command.currency,
            &command.payment_token,
            &decline_code,
        ],
    )
    .await?;
    tracing::info!(%order_id, status, amount_cents = command.amount_cents, "payment decided");
    Ok(match decline_code {
        None => Event::PaymentAuthorized(PaymentAuthorized {
            authorization_id,
            amount_cents: command.amount_cents,
        }),
        Some(code) => Event::PaymentDeclined(PaymentDeclined {
            decline_code: code.to_owned(),
        }),
    })
}
