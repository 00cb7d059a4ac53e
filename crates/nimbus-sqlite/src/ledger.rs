//! `Ledger` on SQLite: one row per item; each write is one statement, so it is atomic and its
//! condition is checked under SQLite's write lock.

use async_trait::async_trait;
use bytes::Bytes;
use nimbus_core::{Condition, Item, ItemKey, Ledger, Order, Page, Result};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::{sql_error, SqliteEngine};

/// One conditional put; returns the new version, or `None` if the condition failed.
fn put_one(
    conn: &Connection,
    key: &ItemKey,
    value: &Bytes,
    condition: Condition,
) -> Result<Option<u64>> {
    let (p, s, v) = (&key.partition, &key.sort, value.as_ref());
    let sql = match condition {
        Condition::Always => {
            "INSERT INTO ledger (partition, sort, value, counter, version) VALUES (?1, ?2, ?3, 0, 1)
             ON CONFLICT (partition, sort) DO UPDATE SET value = excluded.value, version = version + 1
             RETURNING version"
        }
        Condition::Absent => {
            "INSERT INTO ledger (partition, sort, value, counter, version) VALUES (?1, ?2, ?3, 0, 1)
             ON CONFLICT (partition, sort) DO NOTHING RETURNING version"
        }
        Condition::Version(_) => {
            "UPDATE ledger SET value = ?3, version = version + 1
             WHERE partition = ?1 AND sort = ?2 AND version = ?4 RETURNING version"
        }
    };
    let mut stmt = conn.prepare_cached(sql).map_err(sql_error)?;
    let found = match condition {
        Condition::Version(expected) => stmt.query_row(params![p, s, v, expected], |r| r.get(0)),
        _ => stmt.query_row(params![p, s, v], |r| r.get(0)),
    };
    found.optional().map_err(sql_error)
}

fn item(r: &rusqlite::Row<'_>, from: usize) -> rusqlite::Result<Item> {
    Ok(Item {
        value: Bytes::from(r.get::<_, Vec<u8>>(from)?),
        counter: r.get(from + 1)?,
        version: r.get(from + 2)?,
    })
}

#[async_trait]
impl Ledger for SqliteEngine {
    async fn put(&self, key: &ItemKey, value: Bytes, condition: Condition) -> Result<Option<u64>> {
        let key = key.clone();
        self.call(move |conn| put_one(conn, &key, &value, condition))
            .await
    }

    async fn put_batch(&self, items: Vec<(ItemKey, Bytes, Condition)>) -> Result<Vec<Option<u64>>> {
        self.call(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql_error)?;
            let results = items
                .iter()
                .map(|(key, value, condition)| put_one(&tx, key, value, *condition))
                .collect::<Result<Vec<_>>>()?;
            tx.commit().map_err(sql_error)?;
            Ok(results)
        })
        .await
    }

    async fn get(&self, key: &ItemKey) -> Result<Option<Item>> {
        let key = key.clone();
        self.call(move |conn| {
            conn.prepare_cached(
                "SELECT value, counter, version FROM ledger WHERE partition = ?1 AND sort = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![key.partition, key.sort], |r| item(r, 0))
                    .optional()
            })
            .map_err(sql_error)
        })
        .await
    }

    async fn delete(&self, key: &ItemKey, condition: Condition) -> Result<bool> {
        let key = key.clone();
        self.call(move |conn| {
            let n = match condition {
                Condition::Always => conn.execute(
                    "DELETE FROM ledger WHERE partition = ?1 AND sort = ?2",
                    params![key.partition, key.sort],
                ),
                // Deleting "only if absent" can never delete anything.
                Condition::Absent => Ok(0),
                Condition::Version(v) => conn.execute(
                    "DELETE FROM ledger WHERE partition = ?1 AND sort = ?2 AND version = ?3",
                    params![key.partition, key.sort, v],
                ),
            };
            Ok(n.map_err(sql_error)? > 0)
        })
        .await
    }

    async fn add(&self, key: &ItemKey, delta: i64) -> Result<i64> {
        let key = key.clone();
        self.call(move |conn| {
            conn.prepare_cached(
                "INSERT INTO ledger (partition, sort, value, counter, version) VALUES (?1, ?2, x'', ?3, 1)
                 ON CONFLICT (partition, sort) DO UPDATE SET counter = counter + excluded.counter, version = version + 1
                 RETURNING counter",
            )
            .and_then(|mut s| s.query_row(params![key.partition, key.sort, delta], |r| r.get(0)))
            .map_err(sql_error)
        })
        .await
    }

    async fn list(&self, partition: &str) -> Result<Vec<(String, Item)>> {
        let partition = partition.to_string();
        self.call(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT sort, value, counter, version FROM ledger WHERE partition = ?1 ORDER BY sort")
                .map_err(sql_error)?;
            let rows = stmt.query_map([partition], |r| Ok((r.get(0)?, item(r, 1)?))).map_err(sql_error)?;
            rows.collect::<rusqlite::Result<_>>().map_err(sql_error)
        })
        .await
    }

    async fn list_page(&self, page: Page<'_>) -> Result<Vec<(String, Item)>> {
        let (partition, after) = (page.partition.to_string(), page.after.map(str::to_string));
        let (limit, order) = (page.limit as i64, page.order);
        self.call(move |conn| {
            // One statement per direction and cursor, each walking the primary key's index.
            let sql = match (order, after.is_some()) {
                (Order::Ascending, false) => "SELECT sort, value, counter, version FROM ledger WHERE partition = ?1 ORDER BY sort ASC LIMIT ?2",
                (Order::Descending, false) => "SELECT sort, value, counter, version FROM ledger WHERE partition = ?1 ORDER BY sort DESC LIMIT ?2",
                (Order::Ascending, true) => "SELECT sort, value, counter, version FROM ledger WHERE partition = ?1 AND sort > ?3 ORDER BY sort ASC LIMIT ?2",
                (Order::Descending, true) => "SELECT sort, value, counter, version FROM ledger WHERE partition = ?1 AND sort < ?3 ORDER BY sort DESC LIMIT ?2",
            };
            let mut stmt = conn.prepare_cached(sql).map_err(sql_error)?;
            let map = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, item(r, 1)?));
            let rows = match &after {
                Some(after) => stmt.query_map(rusqlite::params![partition, limit, after], map),
                None => stmt.query_map(rusqlite::params![partition, limit], map),
            }
            .map_err(sql_error)?;
            rows.collect::<rusqlite::Result<_>>().map_err(sql_error)
        })
        .await
    }
}
