//! The ceiling for the embedded queue: a minimal SQS-like queue on raw SQLite with the same
//! settings (WAL, synchronous=NORMAL, one connection, batched transactions), no engine around it.

use std::path::Path;
use std::time::Instant;

use rusqlite::{params, Connection, TransactionBehavior};

/// Messages per second for `total` messages sent, received (claimed) and deleted in batches of
/// `batch`, one transaction per step, as the embedded engine does.
pub fn round_trip(db: &Path, total: usize, batch: usize, payload: usize) -> rusqlite::Result<f64> {
    let mut conn = Connection::open(db)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=10000;
         CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY, visible_at INTEGER NOT NULL,
                                        receipt INTEGER NOT NULL DEFAULT 0, body BLOB NOT NULL);
         CREATE INDEX IF NOT EXISTS q_ready ON q (visible_at);",
    )?;
    let body = vec![b'x'; payload];
    let start = Instant::now();
    let mut done = 0;
    let mut ids = Vec::with_capacity(batch);
    while done < total {
        let n = batch.min(total - done);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO q (visible_at, body) VALUES (0, ?1)")?;
            for _ in 0..n {
                insert.execute([&body])?;
            }
        }
        tx.commit()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        ids.clear();
        {
            let mut select = tx.prepare_cached(
                "SELECT id, body FROM q WHERE visible_at <= ?1 ORDER BY visible_at LIMIT ?2",
            )?;
            let mut rows = select.query(params![1, n as i64])?;
            while let Some(r) = rows.next()? {
                let _body: Vec<u8> = r.get(1)?;
                ids.push(r.get::<_, i64>(0)?);
            }
            let mut claim =
                tx.prepare_cached("UPDATE q SET visible_at = ?1, receipt = ?2 WHERE id = ?3")?;
            for id in &ids {
                claim.execute(params![i64::MAX, 7, id])?;
            }
        }
        tx.commit()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut delete = tx.prepare_cached("DELETE FROM q WHERE id = ?1 AND receipt = ?2")?;
            for id in &ids {
                delete.execute(params![id, 7])?;
            }
        }
        tx.commit()?;
        done += n;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
