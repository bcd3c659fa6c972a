//! Any number of processes may start at once on a fresh database: each
//! migration is applied exactly once, and every start succeeds.

use crate::helpers::postgres_base;
use shop_actors::db::{self, ALL_SCHEMAS};
use uuid::Uuid;

#[tokio::test]
async fn four_concurrent_migrations_apply_each_version_once() {
    let name = format!("shop_test_{}", Uuid::new_v4().simple());
    let url = format!("{}/{name}", postgres_base());
    db::ensure_database(&url).await.unwrap();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { db::migrate(&url, &ALL_SCHEMAS).await })
        })
        .collect();
    for run in runs {
        run.await
            .unwrap()
            .expect("every concurrent start migrates without error");
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for schema in &ALL_SCHEMAS {
        for (version, _) in schema.steps {
            let applied: i64 = client
                .query_one(
                    "SELECT count(*) FROM public.shop_migrations WHERE schema_name = $1 AND version = $2",
                    &[&schema.schema, version],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(applied, 1, "{} version {version}", schema.schema);
        }
    }
    let recorded: i64 = client
        .query_one("SELECT count(*) FROM public.shop_migrations", &[])
        .await
        .unwrap()
        .get(0);
    let steps: usize = ALL_SCHEMAS.iter().map(|s| s.steps.len()).sum();
    assert_eq!(recorded, steps as i64);
    // The demo catalogue's rows, inserted by a migration, are there once.
    let duplicated: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT sku FROM product.products GROUP BY sku HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(duplicated, 0);
    drop(client);
    db::drop_database(&url).await.unwrap();
}
