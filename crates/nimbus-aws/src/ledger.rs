//! `Ledger` on DynamoDB: one table per deployment keyed by (pk, sk); the value in `v`, the
//! counter in `c`, the version in `ver`. Every write is one conditional `UpdateItem` or
//! `DeleteItem`, atomic on the item as DynamoDB guarantees; reads are strongly consistent.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use nimbus_core::{Condition, Error, ErrorKind, Item, ItemKey, Ledger, Order, Page, Result};

use crate::error::{malformed, sdk_error};

/// Where the tokens of counter adds are kept (one item each, expiring).
const ADD_TOKENS: &str = "add-token#";
/// How long an add's token is kept: longer than any retry of it can come.
const ADD_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
/// The table's time-to-live attribute (seconds since the epoch).
pub const TTL_ATTRIBUTE: &str = "expires";
use crate::Clients;

/// Puts of one batch kept in flight at once.
const PARALLEL_PUTS: usize = 16;

type Attrs = HashMap<String, AttributeValue>;

/// The ledger of one deployment, in its DynamoDB table.
#[derive(Debug)]
pub struct DynamoLedger {
    clients: Arc<Clients>,
    table: String,
}

impl DynamoLedger {
    /// The ledger in the table of the deployment whose clients these are.
    pub fn new(clients: Arc<Clients>) -> Self {
        let table = clients.table();
        Self { clients, table }
    }

    fn key(key: &ItemKey) -> Attrs {
        HashMap::from([
            ("pk".to_string(), AttributeValue::S(key.partition.clone())),
            ("sk".to_string(), AttributeValue::S(key.sort.clone())),
        ])
    }

    fn error<E>(
        &self,
        action: &str,
        key: &ItemKey,
        err: aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    ) -> Error
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata
            + std::error::Error
            + Send
            + Sync
            + 'static,
    {
        let err = sdk_error(format!("{action} ledger item `{key}`"), err);
        if err.kind() == ErrorKind::NotFound {
            return Error::not_found(format!(
                "ledger table `{}` does not exist; run `nimbus aws up` first",
                self.table
            ))
            .with_source(err);
        }
        err
    }
}

fn number(attrs: &Attrs, name: &str) -> Option<i64> {
    match attrs.get(name) {
        // DynamoDB writes integers as such; an emulator may write `4.0`.
        Some(AttributeValue::N(n)) => n.parse().ok().or_else(|| {
            n.parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        _ => None,
    }
}

fn version(attrs: &Attrs) -> Result<u64> {
    number(attrs, "ver")
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| malformed("ledger write", "version"))
}

fn item(attrs: &Attrs) -> Result<Item> {
    Ok(Item {
        value: match attrs.get("v") {
            Some(AttributeValue::B(blob)) => Bytes::copy_from_slice(blob.as_ref()),
            _ => Bytes::new(),
        },
        counter: number(attrs, "c").unwrap_or(0),
        // Every write sets `ver`, so DynamoDB's items have one; moto, whose updates race, can
        // store an item without it. Such an item reads as version 0, which a compare-and-swap
        // on 0 matches (see `version_condition`), so the next write repairs it.
        version: version(attrs).unwrap_or_else(|_| {
            tracing::warn!("a ledger item has no version; read as 0");
            0
        }),
    })
}

/// The condition that an item is at version `expected` (0: an item without a version).
fn version_condition(expected: u64) -> &'static str {
    if expected == 0 {
        "attribute_exists(pk) AND attribute_not_exists(ver)"
    } else {
        "ver = :expected"
    }
}

/// The values [`version_condition`] names.
fn version_values(expected: u64) -> Option<HashMap<String, AttributeValue>> {
    (expected != 0).then(|| HashMap::from([(":expected".to_string(), n(expected))]))
}

/// Whether an SDK error is DynamoDB's "the condition did not hold".
fn condition_failed(err: &Error) -> bool {
    err.kind() == ErrorKind::Conflict && err.to_string().contains("ConditionalCheckFailed")
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

impl DynamoLedger {
    /// The version a successful put wrote, where the answer did not carry it. DynamoDB always
    /// returns it (every put changes `ver`); moto, whose updates are not atomic, can answer a
    /// put that raced another without it. The condition tells it where it can: an absent item
    /// becomes version 1, a compare-and-swap from `e` version `e + 1`; an unconditional put
    /// reads it back (then at least the version it wrote).
    async fn version_after_put(
        &self,
        key: &ItemKey,
        condition: Condition,
        error: Error,
    ) -> Result<u64> {
        tracing::warn!(key = %key, error = %error, "a ledger put's answer had no version");
        match condition {
            Condition::Absent => Ok(1),
            Condition::Version(e) => Ok(e + 1),
            // The put landed; an item gone or without a version since reads as version 0, which
            // a later compare-and-swap treats as a lost race (it reads again).
            Condition::Always => Ok(self.get(key).await?.map_or(0, |item| item.version)),
        }
    }
}

#[async_trait]
impl Ledger for DynamoLedger {
    async fn put(&self, key: &ItemKey, value: Bytes, condition: Condition) -> Result<Option<u64>> {
        let mut update = "SET ver = if_not_exists(ver, :zero) + :one".to_string();
        let mut values = HashMap::from([(":zero".to_string(), n(0)), (":one".to_string(), n(1))]);
        if value.is_empty() {
            update.push_str(" REMOVE v");
        } else {
            update.push_str(", v = :v");
            values.insert(
                ":v".to_string(),
                AttributeValue::B(Blob::new(value.to_vec())),
            );
        }
        let expected = condition;
        let condition = match condition {
            Condition::Always => None,
            Condition::Absent => Some("attribute_not_exists(pk)"),
            Condition::Version(expected) => {
                values.extend(version_values(expected).unwrap_or_default());
                Some(version_condition(expected))
            }
        };
        let result = self
            .clients
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(key)))
            .update_expression(update)
            .set_condition_expression(condition.map(str::to_string))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| self.error("put", key, e));
        match result {
            Ok(out) => match version(&out.attributes.unwrap_or_default()) {
                Ok(v) => Ok(Some(v)),
                Err(e) => self.version_after_put(key, expected, e).await.map(Some),
            },
            Err(e) if condition_failed(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put_batch(&self, items: Vec<(ItemKey, Bytes, Condition)>) -> Result<Vec<Option<u64>>> {
        futures::stream::iter(items)
            .map(|(key, value, condition)| async move { self.put(&key, value, condition).await })
            .buffered(PARALLEL_PUTS)
            .try_collect()
            .await
    }

    async fn get(&self, key: &ItemKey) -> Result<Option<Item>> {
        let out = self
            .clients
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error("get", key, e))?;
        out.item.as_ref().map(item).transpose()
    }

    async fn delete(&self, key: &ItemKey, condition: Condition) -> Result<bool> {
        let (expression, values) = match condition {
            // Nothing to delete where the condition is that there is nothing.
            Condition::Absent => return Ok(false),
            Condition::Always => ("attribute_exists(pk)", None),
            Condition::Version(expected) => (version_condition(expected), version_values(expected)),
        };
        let result = self
            .clients
            .dynamodb
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(key)))
            .condition_expression(expression)
            .set_expression_attribute_values(values)
            .send()
            .await
            .map_err(|e| self.error("delete", key, e));
        match result {
            Ok(_) => Ok(true),
            Err(e) if condition_failed(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn add(&self, key: &ItemKey, delta: i64) -> Result<i64> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
        // One token per add, written with the add in one transaction: an attempt the SDK sends
        // again after an ambiguous failure (the write landed, its answer was lost) finds the
        // token and is cancelled instead of adding twice. Tokens expire after an hour (TTL).
        let token = uuid::Uuid::now_v7().to_string();
        let expires = (std::time::SystemTime::now() + ADD_TOKEN_TTL)
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let marker = Put::builder()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(format!("{ADD_TOKENS}{token}")))
            .item("sk", AttributeValue::S("add".into()))
            .item(TTL_ATTRIBUTE, AttributeValue::N(expires.to_string()))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| Error::internal("cannot build an add token").with_source(e))?;
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key(key)))
            .update_expression("SET ver = if_not_exists(ver, :zero) + :one ADD c :delta")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":delta", n(delta))
            .build()
            .map_err(|e| Error::internal("cannot build an add").with_source(e))?;
        let sent = self
            .clients
            .dynamodb
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(marker).build())
            .transact_items(TransactWriteItem::builder().update(update).build())
            .send()
            .await;
        match sent {
            Ok(_) => {}
            // The token is there: an earlier attempt of this very add was applied.
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(TransactWriteItemsError::TransactionCanceledException(c))
                        if c.cancellation_reasons().first().and_then(|r| r.code()) == Some("ConditionalCheckFailed")
                ) =>
            {
                tracing::info!(key = %key, "a retried ledger add had already been applied; not added again");
            }
            Err(e) => return Err(self.error("add to", key, e)),
        }
        // A transaction answers no values: the counter is read back (strongly consistent), so
        // it includes this add and possibly others that came after it.
        Ok(self.get(key).await?.map_or(0, |item| item.counter))
    }

    async fn list(&self, partition: &str) -> Result<Vec<(String, Item)>> {
        let pages: Vec<Vec<Attrs>> = self
            .clients
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(partition.to_string()))
            .consistent_read(true)
            .into_paginator()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_error(format!("list ledger partition `{partition}`"), e))?
            .into_iter()
            .map(|page| page.items.unwrap_or_default())
            .collect();
        pages
            .iter()
            .flatten()
            .map(|attrs| {
                let sort = match attrs.get("sk") {
                    Some(AttributeValue::S(s)) => s.clone(),
                    _ => return Err(malformed("list ledger", "sort key")),
                };
                Ok((sort, item(attrs)?))
            })
            .collect()
    }

    async fn list_page(&self, page: Page<'_>) -> Result<Vec<(String, Item)>> {
        let forward = page.order == Order::Ascending;
        let mut condition = "pk = :pk".to_string();
        let mut values = HashMap::from([(
            ":pk".to_string(),
            AttributeValue::S(page.partition.to_string()),
        )]);
        if let Some(after) = page.after {
            condition.push_str(if forward {
                " AND sk > :after"
            } else {
                " AND sk < :after"
            });
            values.insert(":after".into(), AttributeValue::S(after.to_string()));
        }
        let mut out = Vec::with_capacity(page.limit);
        let mut start: Option<Attrs> = None;
        // A query answers at most 1 MB: go on from where it stopped until the page is full.
        loop {
            let answer = self
                .clients
                .dynamodb
                .query()
                .table_name(&self.table)
                .key_condition_expression(&condition)
                .set_expression_attribute_values(Some(values.clone()))
                .scan_index_forward(forward)
                .limit(i32::try_from(page.limit - out.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| sdk_error(format!("page ledger partition `{}`", page.partition), e))?;
            for attrs in answer.items.unwrap_or_default() {
                let sort = match attrs.get("sk") {
                    Some(AttributeValue::S(s)) => s.clone(),
                    _ => return Err(malformed("page ledger", "sort key")),
                };
                out.push((sort, item(&attrs)?));
            }
            match answer.last_evaluated_key {
                Some(key) if out.len() < page.limit && !key.is_empty() => start = Some(key),
                _ => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, AttributeValue)]) -> Attrs {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn items_an_emulator_wrote_oddly_still_read() {
        let whole = attrs(&[
            ("ver", n(3)),
            ("c", n(-2)),
            ("v", AttributeValue::B(Blob::new(b"x".to_vec()))),
        ]);
        let it = item(&whole).unwrap();
        assert_eq!((it.version, it.counter, &it.value[..]), (3, -2, &b"x"[..]));
        let decimal = attrs(&[
            ("ver", AttributeValue::N("4.0".into())),
            ("c", AttributeValue::N("7.0".into())),
        ]);
        assert_eq!(
            (
                item(&decimal).unwrap().version,
                item(&decimal).unwrap().counter
            ),
            (4, 7)
        );
        let versionless = attrs(&[("c", n(1))]);
        assert_eq!(item(&versionless).unwrap().version, 0, "read as version 0");
        assert_eq!(
            version_condition(0),
            "attribute_exists(pk) AND attribute_not_exists(ver)"
        );
        assert_eq!(version_values(0), None);
        assert_eq!(version_condition(5), "ver = :expected");
        assert!(version(&attrs(&[("ver", AttributeValue::N("1.5".into()))])).is_err());
    }
}
