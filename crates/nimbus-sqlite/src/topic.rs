//! `Topic` on SQLite: publishing inserts the message into every subscribed queue whose filter
//! passes, in the same transaction, so fan-out is all or nothing.

use async_trait::async_trait;
use bytes::Bytes;
use nimbus_core::queue::Attributes;
use nimbus_core::{
    Error, Filter, OutgoingMessage, QueueName, Result, Subscription, Topic, TopicName,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::queue::{find_queue, insert_messages, queue_row};
use crate::{now_ms, sql_error, SqliteEngine};

fn topic_id(conn: &Connection, name: &TopicName) -> Result<i64> {
    conn.prepare_cached("SELECT id FROM topics WHERE name = ?1")
        .and_then(|mut s| s.query_row([name.as_str()], |r| r.get(0)).optional())
        .map_err(sql_error)?
        .ok_or_else(|| Error::not_found(format!("topic `{name}` does not exist")))
}

fn encode_filter(filter: Option<&Filter>) -> Option<String> {
    filter.map(|f| serde_json::to_string(f).unwrap_or_default())
}

fn decode_filter(text: Option<String>) -> Result<Option<Filter>> {
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| Error::internal("stored filter is corrupt").with_source(e))
    })
    .transpose()
}

/// Every subscription of a topic as (id, queue name, filter).
fn subscriptions_of(
    conn: &Connection,
    topic_id: i64,
) -> Result<Vec<(i64, String, Option<Filter>)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, queue, filter FROM subscriptions WHERE topic_id = ?1 ORDER BY id",
        )
        .map_err(sql_error)?;
    let rows = stmt
        .query_map([topic_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(sql_error)?;
    rows.map(|row| {
        let (id, queue, filter): (i64, String, Option<String>) = row.map_err(sql_error)?;
        Ok((id, queue, decode_filter(filter)?))
    })
    .collect()
}

#[async_trait]
impl Topic for SqliteEngine {
    async fn create_topic(&self, name: &TopicName) -> Result<()> {
        let name = name.clone();
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO topics (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
                [name.as_str()],
            )
            .map_err(sql_error)?;
            Ok(())
        })
        .await
    }

    async fn delete_topic(&self, name: &TopicName) -> Result<()> {
        let name = name.clone();
        self.call(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql_error)?;
            let id = topic_id(&tx, &name)?;
            tx.execute("DELETE FROM subscriptions WHERE topic_id = ?1", [id])
                .map_err(sql_error)?;
            tx.execute("DELETE FROM topics WHERE id = ?1", [id])
                .map_err(sql_error)?;
            tx.commit().map_err(sql_error)
        })
        .await
    }

    async fn subscribe(
        &self,
        topic: &TopicName,
        queue: &QueueName,
        filter: Option<Filter>,
    ) -> Result<Subscription> {
        let (topic, queue) = (topic.clone(), queue.clone());
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_error)?;
            let tid = topic_id(&tx, &topic)?;
            queue_row(&tx, &queue)?;
            let id: i64 = tx
                .query_row(
                    "INSERT INTO subscriptions (topic_id, queue, filter) VALUES (?1, ?2, ?3)
                     ON CONFLICT (topic_id, queue) DO UPDATE SET filter = excluded.filter RETURNING id",
                    params![tid, queue.as_str(), encode_filter(filter.as_ref())],
                    |r| r.get(0),
                )
                .map_err(sql_error)?;
            tx.commit().map_err(sql_error)?;
            Ok(Subscription { id: id.to_string(), topic, queue, filter })
        })
        .await
    }

    async fn unsubscribe(&self, subscription_id: &str) -> Result<()> {
        let id: i64 = subscription_id.parse().map_err(|_| {
            Error::invalid(format!("subscription id `{subscription_id}` is malformed"))
        })?;
        let shown = subscription_id.to_string();
        self.call(move |conn| {
            let n = conn
                .execute("DELETE FROM subscriptions WHERE id = ?1", [id])
                .map_err(sql_error)?;
            if n == 0 {
                return Err(Error::not_found(format!(
                    "subscription `{shown}` does not exist"
                )));
            }
            Ok(())
        })
        .await
    }

    async fn subscriptions(&self, topic: &TopicName) -> Result<Vec<Subscription>> {
        let topic = topic.clone();
        self.call(move |conn| {
            let tid = topic_id(conn, &topic)?;
            subscriptions_of(conn, tid)?
                .into_iter()
                .map(|(id, queue, filter)| {
                    Ok(Subscription {
                        id: id.to_string(),
                        topic: topic.clone(),
                        queue: QueueName::new(queue)?,
                        filter,
                    })
                })
                .collect()
        })
        .await
    }

    async fn publish(
        &self,
        topic: &TopicName,
        body: Bytes,
        attributes: Attributes,
    ) -> Result<String> {
        let topic = topic.clone();
        let (message_id, fed) = self
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_error)?;
                let tid = topic_id(&tx, &topic)?;
                let message = OutgoingMessage { body, attributes, ..OutgoingMessage::default() };
                let now = now_ms();
                let mut fed = Vec::new();
                for (_, queue, filter) in subscriptions_of(&tx, tid)? {
                    if filter.is_some_and(|f| !f.matches(&message.attributes)) {
                        continue;
                    }
                    // A queue deleted after subscribing, or one too small for the message, is
                    // skipped as SNS skips a failed endpoint; the others still get it.
                    let Some(row) = find_queue(&tx, &queue)? else { continue };
                    let name = QueueName::new(queue.clone())?;
                    if message.check_against(&name, &row.options).is_err() {
                        tracing::warn!(topic = %topic, queue, "message too large for subscribed queue; skipped");
                        continue;
                    }
                    insert_messages(&tx, &name, &row, std::slice::from_ref(&message), now)?;
                    fed.push(queue);
                }
                tx.commit().map_err(sql_error)?;
                Ok((format!("{:016x}", fastrand::u64(..)), fed))
            })
            .await?;
        self.wake(&fed);
        Ok(message_id)
    }
}
