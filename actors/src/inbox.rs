//! Applying a consumer's batch of commands inside one transaction, so that
//! a batch costs a few round trips to Postgres rather than a few per
//! command: the commands of different orders are sent together
//! (tokio-postgres pipelines them; Postgres runs them one after the other
//! in the order they arrive), while one order's commands still run one
//! after the other, in partition order. The caller's effects must let
//! different orders' statements interleave: each order's rows are its own,
//! or a shared row is checked and changed in a single statement (stock).

use crate::db::DbError;
use crate::events::{Envelope, Event};
use crate::trace;
use std::collections::HashMap;
use std::future::Future;
use tracing::Instrument;
use uuid::Uuid;

/// `envelopes` grouped by order: each group in partition order, the groups
/// in the order of their first message.
pub fn by_order<'a>(envelopes: impl IntoIterator<Item = &'a Envelope>) -> Vec<Vec<&'a Envelope>> {
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    let mut groups: Vec<Vec<&Envelope>> = Vec::new();
    for envelope in envelopes {
        let at = *index.entry(envelope.order_id).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(envelope);
    }
    groups
}

/// Applies `commands` (already recorded as processed) with `apply`, order
/// by order as above, and returns the replies, each built in the span of
/// its command (`service`'s process span, in its order's trace).
pub async fn apply_by_order<'a, F, Fut>(
    service: &'static str,
    commands: impl IntoIterator<Item = &'a Envelope>,
    apply: F,
) -> Result<Vec<Envelope>, DbError>
where
    F: Fn(&'a Envelope) -> Fut,
    Fut: Future<Output = Result<Option<Event>, DbError>>,
{
    let apply = &apply;
    let chains =
        by_order(commands).into_iter().map(|chain| async move {
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
        let groups = by_order(&batch);
        let ids = |group: &Vec<&Envelope>| group.iter().map(|e| e.event_id).collect::<Vec<_>>();
        assert_eq!(groups.len(), 2);
        assert_eq!(
            ids(&groups[0]),
            [batch[0].event_id, batch[2].event_id, batch[4].event_id]
        );
        assert_eq!(ids(&groups[1]), [batch[1].event_id, batch[3].event_id]);
    }
}
