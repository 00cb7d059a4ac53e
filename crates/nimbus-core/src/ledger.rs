//! The `Ledger` service: a DynamoDB-style item store with conditional writes and atomic counters.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};

/// The largest item value (as DynamoDB's 400 KB item limit).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// The longest partition or sort key (DynamoDB's sort-key limit).
pub const MAX_KEY_BYTES: usize = 1024;

/// An item's address: a partition and a sort key within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemKey {
    /// Groups items that are listed together (e.g. `job#<id>`).
    pub partition: String,
    /// Identifies the item within its partition.
    pub sort: String,
}

impl ItemKey {
    /// Validates both parts: 1 to [`MAX_KEY_BYTES`] bytes each.
    pub fn new(partition: impl Into<String>, sort: impl Into<String>) -> Result<Self> {
        let key = Self {
            partition: partition.into(),
            sort: sort.into(),
        };
        check_key("partition", &key.partition)?;
        check_key("sort key", &key.sort)?;
        Ok(key)
    }
}

impl fmt::Display for ItemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.partition, self.sort)
    }
}

/// Checks a partition or sort key.
pub fn check_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Error::invalid(format!(
            "{what} must be 1 to {MAX_KEY_BYTES} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

/// The most items one page of a partition holds.
pub const MAX_PAGE: usize = 1000;

/// Which way a page of a partition runs by sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Smallest sort key first.
    Ascending,
    /// Largest sort key first (newest first, for time-ordered keys).
    Descending,
}

/// A page of a partition: at most `limit` items, in `order`, whose sort keys come strictly
/// after `after` in that order (from the start when `None`). The last sort key of a page is the
/// cursor of the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page<'a> {
    /// The partition.
    pub partition: &'a str,
    /// The sort key the page starts after.
    pub after: Option<&'a str>,
    /// The most items (1 to [`MAX_PAGE`]).
    pub limit: usize,
    /// Which way it runs.
    pub order: Order,
}

/// Checks a page's partition, cursor and limit.
pub fn check_page(page: &Page<'_>) -> Result<()> {
    check_key("partition", page.partition)?;
    if let Some(after) = page.after {
        check_key("page cursor", after)?;
    }
    if !(1..=MAX_PAGE).contains(&page.limit) {
        return Err(Error::invalid(format!(
            "page limit must be 1 to {MAX_PAGE}, got {}",
            page.limit
        )));
    }
    Ok(())
}

/// Checks an item value's size.
pub fn check_value(value: &Bytes) -> Result<()> {
    if value.len() > MAX_ITEM_BYTES {
        return Err(Error::invalid(format!(
            "item value of {} bytes is over the limit of {MAX_ITEM_BYTES} bytes",
            value.len()
        )));
    }
    Ok(())
}

/// A stored item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The value last put (empty for an item only ever counted).
    pub value: Bytes,
    /// The counter, changed only by [`Ledger::add`] (0 until then).
    pub counter: i64,
    /// 1 when created, one more on every put or add: the handle for optimistic concurrency.
    pub version: u64,
}

/// When a put or delete may happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Always.
    Always,
    /// Only if there is no item (DynamoDB's `attribute_not_exists`).
    Absent,
    /// Only if the item exists at exactly this version (compare-and-swap).
    Version(u64),
}

/// A key-value ledger with DynamoDB semantics: single-item writes are atomic and conditional.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Writes `value` if `condition` holds, keeping the item's counter. Returns the new version,
    /// or `None` when the condition did not hold (nothing was written).
    async fn put(&self, key: &ItemKey, value: Bytes, condition: Condition) -> Result<Option<u64>>;

    /// Creates the item if there is none; `true` if this call created it. Of any number of
    /// concurrent callers on any number of machines, exactly one gets `true`.
    async fn put_if_absent(&self, key: &ItemKey, value: Bytes) -> Result<bool> {
        Ok(self.put(key, value, Condition::Absent).await?.is_some())
    }

    /// Several independent puts, each with its own condition (not a transaction: one item's
    /// condition failing does not stop the others). Returns each put's result in order. Engines
    /// write them together where they can (one SQLite transaction); the default puts one by one.
    async fn put_batch(&self, items: Vec<(ItemKey, Bytes, Condition)>) -> Result<Vec<Option<u64>>> {
        let mut results = Vec::with_capacity(items.len());
        for (key, value, condition) in items {
            results.push(self.put(&key, value, condition).await?);
        }
        Ok(results)
    }

    /// The item, if there is one.
    async fn get(&self, key: &ItemKey) -> Result<Option<Item>>;

    /// Deletes the item if `condition` holds; `true` if an item was deleted.
    async fn delete(&self, key: &ItemKey, condition: Condition) -> Result<bool>;

    /// Adds `delta` to the item's counter atomically (creating the item at 0 first if needed)
    /// and returns the new value; concurrent adds never lose an update.
    async fn add(&self, key: &ItemKey, delta: i64) -> Result<i64>;

    /// Every item of a partition with its sort key, sorted by sort key.
    async fn list(&self, partition: &str) -> Result<Vec<(String, Item)>>;

    /// One page of a partition (see [`Page`]), read without reading the rest: what listings of
    /// large partitions use. The default reads the whole partition; engines page natively.
    async fn list_page(&self, page: Page<'_>) -> Result<Vec<(String, Item)>> {
        check_page(&page)?;
        let mut all = self.list(page.partition).await?;
        if page.order == Order::Descending {
            all.reverse();
        }
        Ok(all
            .into_iter()
            .filter(|(sort, _)| match (page.after, page.order) {
                (None, _) => true,
                (Some(after), Order::Ascending) => sort.as_str() > after,
                (Some(after), Order::Descending) => sort.as_str() < after,
            })
            .take(page.limit)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_have_limits() {
        assert!(ItemKey::new("p", "s").is_ok());
        assert!(ItemKey::new("", "s")
            .unwrap_err()
            .to_string()
            .contains("partition"));
        assert!(ItemKey::new("p", "x".repeat(MAX_KEY_BYTES + 1))
            .unwrap_err()
            .to_string()
            .contains("sort key"));
        assert!(check_value(&Bytes::from(vec![0; MAX_ITEM_BYTES + 1])).is_err());
    }
}
