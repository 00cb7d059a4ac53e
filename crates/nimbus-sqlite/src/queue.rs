//! `Queue` on SQLite: one row per message; visibility is a timestamp, a receipt is a random token
//! that every delivery replaces, so a stale receipt matches nothing.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use nimbus_core::queue::{Attributes, DEDUP_WINDOW};
use nimbus_core::{
    DeadLetter, Delivery, Depth, Error, OutgoingMessage, Queue, QueueName, QueueOptions, Receipt,
    ReceiveRequest, Result,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use sha2::{Digest, Sha256};

use crate::{ms, now_ms, sql_error, time_of, SqliteEngine};

/// A queue's row: its id and options.
pub(crate) struct QueueRow {
    pub(crate) id: i64,
    pub(crate) options: QueueOptions,
}

/// Looks a queue up by name; `NotFound` names it.
pub(crate) fn queue_row(conn: &Connection, name: &QueueName) -> Result<QueueRow> {
    find_queue(conn, name.as_str())?
        .ok_or_else(|| Error::not_found(format!("queue `{name}` does not exist")))
}

pub(crate) fn find_queue(conn: &Connection, name: &str) -> Result<Option<QueueRow>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, visibility_ms, retention_ms, max_bytes, content_dedup, dlq, max_receives
             FROM queues WHERE name = ?1",
        )
        .map_err(sql_error)?;
    stmt.query_row([name], |r| {
        let dlq: Option<String> = r.get(5)?;
        let max_receives: Option<u32> = r.get(6)?;
        Ok((
            r.get::<_, i64>(0)?,
            QueueOptions {
                visibility_timeout: Duration::from_millis(r.get(1)?),
                retention: Duration::from_millis(r.get(2)?),
                max_message_bytes: r.get(3)?,
                content_based_dedup: r.get(4)?,
                dead_letter: None,
            },
            dlq.zip(max_receives),
        ))
    })
    .optional()
    .map_err(sql_error)?
    .map(|(id, mut options, dl)| {
        if let Some((queue, max_receives)) = dl {
            options.dead_letter = Some(DeadLetter {
                queue: QueueName::new(queue)?,
                max_receives,
            });
        }
        Ok(QueueRow { id, options })
    })
    .transpose()
}

fn immediate(conn: &mut Connection) -> Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_error)
}

fn encode_attrs(attrs: &Attributes) -> Option<String> {
    (!attrs.is_empty()).then(|| serde_json::to_string(attrs).unwrap_or_default())
}

fn decode_attrs(text: Option<String>) -> Attributes {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn receipt_of(message_id: i64, token: i64) -> Receipt {
    Receipt(format!("{message_id}-{token:x}"))
}

fn parse_receipt(receipt: &Receipt) -> Result<(i64, i64)> {
    let bad = || Error::invalid(format!("receipt `{receipt}` is malformed"));
    let (id, token) = receipt.0.split_once('-').ok_or_else(bad)?;
    Ok((
        id.parse().map_err(|_| bad())?,
        i64::from_str_radix(token, 16).map_err(|_| bad())?,
    ))
}

/// A fresh receipt token: random, non-zero (zero marks "never delivered").
fn new_token() -> i64 {
    fastrand::i64(1..i64::MAX)
}

/// Inserts `messages` into the queue `row` inside `tx`; returns their ids.
pub(crate) fn insert_messages(
    tx: &Transaction<'_>,
    name: &QueueName,
    row: &QueueRow,
    messages: &[OutgoingMessage],
    now: i64,
) -> Result<Vec<String>> {
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO messages (queue_id, visible_at, sent_at, group_id, attrs, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(sql_error)?;
    if name.is_fifo() {
        tx.prepare_cached("DELETE FROM dedup WHERE queue_id = ?1 AND expires_at <= ?2")
            .and_then(|mut s| s.execute(params![row.id, now]))
            .map_err(sql_error)?;
    }
    let mut ids = Vec::with_capacity(messages.len());
    for m in messages {
        let dedup_id = name.is_fifo().then(|| dedup_id_of(m));
        if let Some(dedup) = &dedup_id {
            let seen: Option<i64> = tx
                .prepare_cached(
                    "SELECT message_id FROM dedup WHERE queue_id = ?1 AND dedup_id = ?2",
                )
                .and_then(|mut s| s.query_row(params![row.id, dedup], |r| r.get(0)).optional())
                .map_err(sql_error)?;
            if let Some(first) = seen {
                ids.push(first.to_string());
                continue;
            }
        }
        insert
            .execute(params![
                row.id,
                now + ms(m.delay),
                now,
                m.group_id,
                encode_attrs(&m.attributes),
                m.body.as_ref()
            ])
            .map_err(sql_error)?;
        let id = tx.last_insert_rowid();
        if let Some(dedup) = dedup_id {
            tx.prepare_cached("INSERT INTO dedup (queue_id, dedup_id, message_id, expires_at) VALUES (?1, ?2, ?3, ?4)")
                .and_then(|mut s| s.execute(params![row.id, dedup, id, now + ms(DEDUP_WINDOW)]))
                .map_err(sql_error)?;
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

fn dedup_id_of(m: &OutgoingMessage) -> String {
    m.dedup_id.clone().unwrap_or_else(|| {
        Sha256::digest(&m.body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// A message picked for delivery, before it is updated.
struct Candidate {
    id: i64,
    receive_count: u32,
    sent_at: i64,
    group_id: Option<String>,
    attrs: Option<String>,
    body: Vec<u8>,
}

fn candidate(r: &rusqlite::Row<'_>) -> rusqlite::Result<Candidate> {
    Ok(Candidate {
        id: r.get(0)?,
        receive_count: r.get(1)?,
        sent_at: r.get(2)?,
        group_id: r.get(3)?,
        attrs: r.get(4)?,
        body: r.get(5)?,
    })
}

const CANDIDATE_COLUMNS: &str = "id, receive_count, sent_at, group_id, attrs, body";

/// Visible messages of a standard queue, oldest visibility first.
fn standard_candidates(
    tx: &Transaction<'_>,
    queue_id: i64,
    now: i64,
    limit: usize,
) -> Result<Vec<Candidate>> {
    let sql = format!(
        "SELECT {CANDIDATE_COLUMNS} FROM messages WHERE queue_id = ?1 AND visible_at <= ?2 ORDER BY visible_at LIMIT ?3"
    );
    let mut stmt = tx.prepare_cached(&sql).map_err(sql_error)?;
    let rows = stmt
        .query_map(params![queue_id, now, limit as i64], candidate)
        .map_err(sql_error)?;
    rows.collect::<rusqlite::Result<_>>().map_err(sql_error)
}

/// Messages of a FIFO queue in send order, skipping every group that has a message in flight.
fn fifo_candidates(
    tx: &Transaction<'_>,
    queue_id: i64,
    now: i64,
    limit: usize,
) -> Result<Vec<Candidate>> {
    // A group is held when any of its messages is in flight, wherever it stands in the group
    // (a later message may be in flight while an earlier one was released for a retry).
    let held: std::collections::HashSet<String> = tx
        .prepare_cached("SELECT DISTINCT COALESCE(group_id, '') FROM messages WHERE queue_id = ?1 AND visible_at > ?2")
        .and_then(|mut st| st.query_map(params![queue_id, now], |r| r.get(0))?.collect())
        .map_err(sql_error)?;
    let sql = format!("SELECT {CANDIDATE_COLUMNS} FROM messages WHERE queue_id = ?1 ORDER BY id");
    let mut stmt = tx.prepare_cached(&sql).map_err(sql_error)?;
    let mut rows = stmt.query(params![queue_id]).map_err(sql_error)?;
    let mut picked = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        let c = candidate(row).map_err(sql_error)?;
        if held.contains(c.group_id.as_deref().unwrap_or_default()) {
            continue;
        }
        picked.push(c);
        if picked.len() == limit {
            break;
        }
    }
    Ok(picked)
}

impl SqliteEngine {
    /// One receive attempt without waiting; returns the deliveries and the queues it fed (a
    /// dead-letter queue gets messages too).
    fn receive_now(
        conn: &mut Connection,
        name: &QueueName,
        request: ReceiveRequest,
    ) -> Result<(Vec<Delivery>, Vec<String>)> {
        let row = queue_row(conn, name)?;
        let now = now_ms();
        // Look before taking the write lock: an idle poll must not block writers.
        let any: Option<i64> = conn
            .prepare_cached(
                "SELECT 1 FROM messages WHERE queue_id = ?1 AND visible_at <= ?2 LIMIT 1",
            )
            .and_then(|mut s| s.query_row(params![row.id, now], |r| r.get(0)).optional())
            .map_err(sql_error)?;
        if any.is_none() {
            return Ok((Vec::new(), Vec::new()));
        }
        let visibility = request
            .visibility_timeout
            .unwrap_or(row.options.visibility_timeout);
        let tx = immediate(conn)?;
        let now = now_ms();
        let dead_letter = match &row.options.dead_letter {
            Some(dl) => find_queue(&tx, dl.queue.as_str())?
                .map(|q| (q.id, dl.max_receives, dl.queue.to_string())),
            None => None,
        };
        let retention = ms(row.options.retention);
        let mut deliveries = Vec::new();
        let mut fed = Vec::new();
        // With a zero visibility timeout a delivered row stays visible: never hand it out twice.
        let mut seen = std::collections::HashSet::new();
        loop {
            let want = request.max_messages - deliveries.len();
            let batch = if name.is_fifo() {
                fifo_candidates(&tx, row.id, now, want)?
            } else {
                standard_candidates(&tx, row.id, now, want)?
            };
            if batch.is_empty() {
                break;
            }
            let mut skipped = false;
            for c in batch {
                if !seen.insert(c.id) {
                    continue;
                }
                if now - c.sent_at >= retention {
                    tx.prepare_cached("DELETE FROM messages WHERE id = ?1")
                        .and_then(|mut s| s.execute([c.id]))
                        .map_err(sql_error)?;
                    skipped = true;
                    continue;
                }
                if let Some((dlq_id, max, dlq_name)) = &dead_letter {
                    if c.receive_count >= *max {
                        tx.prepare_cached(
                            "UPDATE messages SET queue_id = ?1, receive_count = 0, receipt = 0, visible_at = ?2 WHERE id = ?3",
                        )
                        .and_then(|mut s| s.execute(params![dlq_id, now, c.id]))
                        .map_err(sql_error)?;
                        tracing::info!(queue = %name, message_id = c.id, dead_letter = %dlq_name, "message dead-lettered");
                        fed.push(dlq_name.clone());
                        skipped = true;
                        continue;
                    }
                }
                let token = new_token();
                tx.prepare_cached(
                    "UPDATE messages SET visible_at = ?1, receive_count = receive_count + 1, receipt = ?2 WHERE id = ?3",
                )
                .and_then(|mut s| s.execute(params![now + ms(visibility), token, c.id]))
                .map_err(sql_error)?;
                deliveries.push(Delivery {
                    message_id: c.id.to_string(),
                    receipt: receipt_of(c.id, token),
                    body: Bytes::from(c.body),
                    attributes: decode_attrs(c.attrs),
                    receive_count: c.receive_count + 1,
                    sent_at: time_of(c.sent_at),
                    group_id: c.group_id,
                });
            }
            // Expired or dead-lettered rows left room in the batch: pick again to fill it.
            if !skipped || deliveries.len() == request.max_messages {
                break;
            }
        }
        tx.commit().map_err(sql_error)?;
        Ok((deliveries, fed))
    }
}

#[async_trait]
impl Queue for SqliteEngine {
    async fn create_queue(&self, name: &QueueName, options: &QueueOptions) -> Result<()> {
        let (name, options) = (name.clone(), options.clone());
        self.call(move |conn| {
            let tx = immediate(conn)?;
            if let Some(existing) = find_queue(&tx, name.as_str())? {
                if existing.options != options {
                    return Err(Error::conflict(format!("queue `{name}` exists with other options")));
                }
                return Ok(());
            }
            if let Some(dl) = &options.dead_letter {
                if find_queue(&tx, dl.queue.as_str())?.is_none() {
                    return Err(Error::not_found(format!("dead-letter queue `{}` does not exist", dl.queue)));
                }
            }
            tx.execute(
                "INSERT INTO queues (name, visibility_ms, retention_ms, max_bytes, content_dedup, dlq, max_receives)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    name.as_str(),
                    ms(options.visibility_timeout),
                    ms(options.retention),
                    options.max_message_bytes,
                    options.content_based_dedup,
                    options.dead_letter.as_ref().map(|d| d.queue.to_string()),
                    options.dead_letter.as_ref().map(|d| d.max_receives),
                ],
            )
            .map_err(sql_error)?;
            tx.commit().map_err(sql_error)
        })
        .await
    }

    async fn delete_queue(&self, name: &QueueName) -> Result<()> {
        let name = name.clone();
        self.call(move |conn| {
            let tx = immediate(conn)?;
            let row = queue_row(&tx, &name)?;
            for sql in [
                "DELETE FROM messages WHERE queue_id = ?1",
                "DELETE FROM dedup WHERE queue_id = ?1",
                "DELETE FROM queues WHERE id = ?1",
            ] {
                tx.execute(sql, [row.id]).map_err(sql_error)?;
            }
            tx.commit().map_err(sql_error)
        })
        .await
    }

    async fn list_queues(&self) -> Result<Vec<QueueName>> {
        self.call(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT name FROM queues ORDER BY name")
                .map_err(sql_error)?;
            let names = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(sql_error)?;
            names
                .map(|n| QueueName::new(n.map_err(sql_error)?))
                .collect()
        })
        .await
    }

    async fn queue_options(&self, name: &QueueName) -> Result<QueueOptions> {
        let name = name.clone();
        self.call(move |conn| Ok(queue_row(conn, &name)?.options))
            .await
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<String>> {
        let name = queue.clone();
        let ids = self
            .call(move |conn| {
                let tx = immediate(conn)?;
                let row = queue_row(&tx, &name)?;
                for m in &messages {
                    m.check_against(&name, &row.options)?;
                }
                let ids = insert_messages(&tx, &name, &row, &messages, now_ms())?;
                tx.commit().map_err(sql_error)?;
                Ok(ids)
            })
            .await?;
        self.wake(&[queue.to_string()]);
        Ok(ids)
    }

    async fn receive(&self, queue: &QueueName, request: ReceiveRequest) -> Result<Vec<Delivery>> {
        let waiter = self.waiter(queue.as_str());
        let deadline = tokio::time::Instant::now() + request.wait;
        loop {
            let notified = waiter.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let name = queue.clone();
            let (got, fed) = self
                .call(move |conn| Self::receive_now(conn, &name, request))
                .await?;
            self.wake(&fed);
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let nap = self.inner.options.poll_interval.min(deadline - now);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    async fn delete_batch(&self, queue: &QueueName, receipts: &[Receipt]) -> Result<()> {
        let parsed = receipts
            .iter()
            .map(parse_receipt)
            .collect::<Result<Vec<_>>>()?;
        let name = queue.clone();
        self.call(move |conn| {
            let tx = immediate(conn)?;
            let row = queue_row(&tx, &name)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "DELETE FROM messages WHERE id = ?1 AND receipt = ?2 AND queue_id = ?3",
                    )
                    .map_err(sql_error)?;
                for (id, token) in parsed {
                    stmt.execute(params![id, token, row.id])
                        .map_err(sql_error)?;
                }
            }
            tx.commit().map_err(sql_error)
        })
        .await
    }

    async fn change_visibility(
        &self,
        queue: &QueueName,
        receipt: &Receipt,
        timeout: Duration,
    ) -> Result<()> {
        let (id, token) = parse_receipt(receipt)?;
        let (name, receipt) = (queue.clone(), receipt.clone());
        self.call(move |conn| {
            let row = queue_row(conn, &name)?;
            let changed = conn
                .prepare_cached("UPDATE messages SET visible_at = ?1 WHERE id = ?2 AND receipt = ?3 AND queue_id = ?4")
                .and_then(|mut s| s.execute(params![now_ms() + ms(timeout), id, token, row.id]))
                .map_err(sql_error)?;
            if changed == 0 {
                return Err(Error::not_found(format!(
                    "receipt `{receipt}` is stale: the message was deleted or delivered again"
                )));
            }
            Ok(())
        })
        .await?;
        if timeout.is_zero() {
            self.wake(&[queue.to_string()]);
        }
        Ok(())
    }

    async fn depth(&self, queue: &QueueName) -> Result<Depth> {
        let name = queue.clone();
        self.call(move |conn| {
            let row = queue_row(conn, &name)?;
            conn.prepare_cached(
                "SELECT COALESCE(SUM(visible_at <= ?2), 0),
                        COALESCE(SUM(visible_at > ?2 AND receive_count > 0), 0),
                        COALESCE(SUM(visible_at > ?2 AND receive_count = 0), 0)
                 FROM messages WHERE queue_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row(params![row.id, now_ms()], |r| {
                    Ok(Depth {
                        visible: r.get(0)?,
                        in_flight: r.get(1)?,
                        delayed: r.get(2)?,
                    })
                })
            })
            .map_err(sql_error)
        })
        .await
    }

    async fn purge(&self, queue: &QueueName) -> Result<()> {
        let name = queue.clone();
        self.call(move |conn| {
            let row = queue_row(conn, &name)?;
            conn.execute("DELETE FROM messages WHERE queue_id = ?1", [row.id])
                .map_err(sql_error)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sweep_deletes_only_messages_past_retention() {
        let dir = tempfile::tempdir().unwrap();
        let engine =
            SqliteEngine::open(dir.path().join("db"), crate::SqliteOptions::default()).unwrap();
        let q = QueueName::new("q").unwrap();
        engine
            .create_queue(
                &q,
                &QueueOptions {
                    retention: Duration::from_secs(60),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        engine
            .send_batch(
                &q,
                vec![OutgoingMessage::new("old"), OutgoingMessage::new("new")],
            )
            .await
            .unwrap();
        let conn = Connection::open(dir.path().join("db")).unwrap();
        conn.execute(
            "UPDATE messages SET sent_at = sent_at - 61000 WHERE body = x'6f6c64'",
            [],
        )
        .unwrap();
        assert_eq!(crate::sweep_expired(&conn).unwrap(), 1);
        assert_eq!(engine.depth(&q).await.unwrap().visible, 1);
    }

    #[test]
    fn receipts_round_trip_and_malformed_ones_are_refused() {
        let r = receipt_of(42, 0xabc);
        assert_eq!(parse_receipt(&r).unwrap(), (42, 0xabc));
        for bad in ["", "42", "x-1", "42-zz"] {
            let err = parse_receipt(&Receipt(bad.into())).unwrap_err();
            assert!(err.to_string().contains("malformed"), "{bad}");
        }
    }
}
