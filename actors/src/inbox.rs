//! Applying a consumer's batch of commands inside one transaction, each
//! command at most once (its event id is recorded in the same
//! transaction), so that
//! a batch costs a few round trips to Postgres rather than a few per
//! command: the commands of different orders are sent together
//! (tokio-postgres pipelines them; Postgres runs them one after the other
//! in the order they arrive), while one order's commands still run one
//! after the other, in partition order. The caller's effects must let
//! different orders' statements interleave: each order's rows are its own,
//! or a shared row is checked and changed in a single statement (stock).

use crate::db::DbError;
use crate::events::{Envelope, Event};
use crate::{outbox, trace};
use deadpool_postgres::Transaction;
use std::collections::HashMap;
use std::future::Future;
use tracing::Instrument;
use uuid::Uuid;

/// `items` grouped by the order `order_of` says each belongs to: each group
/// in arrival (partition) order, the groups in the order of their first
/// item.
pub fn by_order<T>(
    items: impl IntoIterator<Item = T>,
    order_of: impl Fn(&T) -> Uuid,
) -> Vec<Vec<T>> {
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    let mut groups: Vec<Vec<T>> = Vec::new();
    for item in items {
        let at = *index.entry(order_of(&item)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(item);
    }
    groups
}

/// Records every event id of `batch` as processed in `tx` (one statement,
/// [`outbox::first_deliveries`]), then applies each command seen for the
/// first time with `apply`, order by order as above. An id repeated in the
/// batch, or delivered before, is applied once. Returns the replies, each
/// built in the span of its command (`service`'s process span, in its
/// order's trace), for the caller to append to its outbox.
pub async fn apply_batch<'a, F, Fut>(
    tx: &Transaction<'_>,
    schema: &str,
    service: &'static str,
    batch: &'a [Envelope],
    apply: F,
) -> Result<Vec<Envelope>, DbError>
where
    F: Fn(&'a Envelope) -> Fut,
    Fut: Future<Output = Result<Option<Event>, DbError>>,
{
    let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
    let mut fresh = outbox::first_deliveries(tx, schema, &ids).await?;
    // `remove`: an id twice in one batch is applied once.
    let commands = batch.iter().filter(|envelope| {
        let first = fresh.remove(&envelope.event_id);
        if !first {
            tracing::debug!(event_id = %envelope.event_id, service, "duplicate command ignored");
        }
        first
    });
    let apply = &apply;
    let chains = by_order(commands, |e| e.order_id)
        .into_iter()
        .map(|chain| async move {
            let mut replies = Vec::with_capacity(chain.len());
            for envelope in chain {
                let span = trace::process_span(service, envelope);
                if let Some(reply) = apply(envelope).instrument(span.clone()).await? {
                    replies.push(span.in_scope(|| {
                        Envelope::new(envelope.order_id, envelope.correlation_id, reply)
                    }));
                }
            }
            Ok::<_, DbError>(replies)
        });
    Ok(futures::future::try_join_all(chains)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::PaymentVoided;

    fn envelope(order_id: Uuid) -> Envelope {
        Envelope::new(
            order_id,
            Uuid::now_v7(),
            Event::PaymentVoided(PaymentVoided {
                authorization_id: None,
            }),
        )
    }

    #[test]
    fn groups_keep_partition_order_within_an_order_and_first_seen_order_across() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let batch = [
            envelope(a),
            envelope(b),
            envelope(a),
            envelope(b),
            envelope(a),
        ];
        let groups = by_order(&batch, |e| e.order_id);
        let ids = |group: &Vec<&Envelope>| group.iter().map(|e| e.event_id).collect::<Vec<_>>();
        assert_eq!(groups.len(), 2);
        assert_eq!(
            ids(&groups[0]),
            [batch[0].event_id, batch[2].event_id, batch[4].event_id]
        );
        assert_eq!(ids(&groups[1]), [batch[1].event_id, batch[3].event_id]);
    }
}
