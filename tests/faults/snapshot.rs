//! Everything a redelivered message could change, as one comparable map:
//! a digest of every table the services own, plus per-row entries for the
//! tables that name an order or a product, so a difference says which.

use std::collections::BTreeMap;
use tokio_postgres::Client;

/// `what → value`, e.g. `order <id> → CONFIRMED None 4`.
pub type Snapshot = BTreeMap<String, String>;

/// Reads the snapshot.
pub async fn take(db: &Client) -> Snapshot {
    let mut snapshot = Snapshot::new();
    let tables = db
        .query(
            "SELECT table_schema, table_name FROM information_schema.tables
             WHERE table_schema IN ('orders', 'product', 'payment') AND table_type = 'BASE TABLE'
             ORDER BY 1, 2",
            &[],
        )
        .await
        .expect("list tables");
    for table in &tables {
        let name = format!("{}.{}", table.get::<_, &str>(0), table.get::<_, &str>(1));
        // Whole rows, every column (timestamps too: a rewrite is an effect).
        let row = db
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')
                     FROM {name} t"
                ),
                &[],
            )
            .await
            .expect("digest a table");
        snapshot.insert(
            format!("table {name}"),
            format!(
                "{} rows, md5 {}",
                row.get::<_, i64>(0),
                row.get::<_, &str>(1)
            ),
        );
    }
    let rows: [(&str, &str); 4] = [
        (
            "order",
            "SELECT id::text, concat_ws(' ', status, coalesce(reason, '-'), seq, updated_at)
             FROM orders.orders",
        ),
        (
            "authorization",
            "SELECT order_id::text, concat_ws(' ', status, id, amount_cents, created_at)
             FROM payment.authorizations",
        ),
        (
            "stock",
            "SELECT id::text, concat_ws(' ', stock, updated_at) FROM product.products",
        ),
        (
            "reservation",
            "SELECT order_id::text || '/' || product_id::text,
                    concat_ws(' ', quantity, status, updated_at)
             FROM product.reservations",
        ),
    ];
    for (kind, sql) in rows {
        for row in db.query(sql, &[]).await.expect("read rows") {
            snapshot.insert(
                format!("{kind} {}", row.get::<_, &str>(0)),
                row.get::<_, String>(1),
            );
        }
    }
    snapshot
}

/// What differs between `before` and `after`, one line per key.
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut changes = Vec::new();
    for (key, old) in before {
        match after.get(key) {
            None => changes.push(format!("{key}: gone (was {old})")),
            Some(new) if new != old => changes.push(format!("{key}: {old} -> {new}")),
            Some(_) => {}
        }
    }
    for (key, new) in after {
        if !before.contains_key(key) {
            changes.push(format!("{key}: new ({new})"));
        }
    }
    changes
}
