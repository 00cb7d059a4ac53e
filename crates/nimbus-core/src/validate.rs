//! The rules every engine obeys, applied once in front of every engine: [`Engine::new`] wraps
//! each service in its checker, so a call an engine would refuse is refused the same way, with
//! the same message, before any engine sees it, and a batch with one bad item writes nothing on
//! every engine. Only the rules that need a queue's stored options (its message size limit,
//! content-based deduplication) are left to the engine that holds them, through the same core
//! function ([`OutgoingMessage::check_against`]).
//!
//! [`Engine::new`]: crate::Engine::new

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::ledger::{check_key, check_page, check_value, Condition, Item, ItemKey, Ledger, Page};
use crate::names::{QueueName, TopicName};
use crate::queue::{
    check_batch, check_visibility, Attributes, Delivery, Depth, OutgoingMessage, Queue,
    QueueOptions, Receipt, ReceiveRequest,
};
use crate::topic::{check_publish, check_subscribe, Filter, Subscription, Topic};

/// A queue service behind the core rules.
pub struct CheckedQueue(pub Arc<dyn Queue>);

#[async_trait]
impl Queue for CheckedQueue {
    async fn create_queue(&self, name: &QueueName, options: &QueueOptions) -> Result<()> {
        options.validate(name)?;
        self.0.create_queue(name, options).await
    }

    async fn delete_queue(&self, name: &QueueName) -> Result<()> {
        self.0.delete_queue(name).await
    }

    async fn list_queues(&self) -> Result<Vec<QueueName>> {
        self.0.list_queues().await
    }

    async fn queue_options(&self, name: &QueueName) -> Result<QueueOptions> {
        self.0.queue_options(name).await
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<String>> {
        check_batch("send", messages.len())?;
        for (i, m) in messages.iter().enumerate() {
            m.check_shape(queue)
                .map_err(|e| e.context(format!("message {i} of the batch")))?;
        }
        self.0.send_batch(queue, messages).await
    }

    async fn receive(&self, queue: &QueueName, request: ReceiveRequest) -> Result<Vec<Delivery>> {
        request.validate()?;
        self.0.receive(queue, request).await
    }

    async fn delete_batch(&self, queue: &QueueName, receipts: &[Receipt]) -> Result<()> {
        check_batch("delete", receipts.len())?;
        self.0.delete_batch(queue, receipts).await
    }

    async fn change_visibility(
        &self,
        queue: &QueueName,
        receipt: &Receipt,
        timeout: Duration,
    ) -> Result<()> {
        check_visibility(timeout)?;
        self.0.change_visibility(queue, receipt, timeout).await
    }

    async fn depth(&self, queue: &QueueName) -> Result<Depth> {
        self.0.depth(queue).await
    }

    async fn purge(&self, queue: &QueueName) -> Result<()> {
        self.0.purge(queue).await
    }
}

/// A topic service behind the core rules.
pub struct CheckedTopic(pub Arc<dyn Topic>);

#[async_trait]
impl Topic for CheckedTopic {
    async fn create_topic(&self, name: &TopicName) -> Result<()> {
        self.0.create_topic(name).await
    }

    async fn delete_topic(&self, name: &TopicName) -> Result<()> {
        self.0.delete_topic(name).await
    }

    async fn subscribe(
        &self,
        topic: &TopicName,
        queue: &QueueName,
        filter: Option<Filter>,
    ) -> Result<Subscription> {
        check_subscribe(queue, filter.as_ref())?;
        self.0.subscribe(topic, queue, filter).await
    }

    async fn unsubscribe(&self, subscription_id: &str) -> Result<()> {
        self.0.unsubscribe(subscription_id).await
    }

    async fn subscriptions(&self, topic: &TopicName) -> Result<Vec<Subscription>> {
        self.0.subscriptions(topic).await
    }

    async fn publish(
        &self,
        topic: &TopicName,
        body: Bytes,
        attributes: Attributes,
    ) -> Result<String> {
        check_publish(&body, &attributes)?;
        self.0.publish(topic, body, attributes).await
    }
}

/// A ledger behind the core rules. Keys are checked again here: [`ItemKey`]'s fields are public,
/// so one may have been built without [`ItemKey::new`].
pub struct CheckedLedger(pub Arc<dyn Ledger>);

fn check_item_key(key: &ItemKey) -> Result<()> {
    check_key("partition", &key.partition)?;
    check_key("sort key", &key.sort)
}

#[async_trait]
impl Ledger for CheckedLedger {
    async fn put(&self, key: &ItemKey, value: Bytes, condition: Condition) -> Result<Option<u64>> {
        check_item_key(key)?;
        check_value(&value)?;
        self.0.put(key, value, condition).await
    }

    async fn put_if_absent(&self, key: &ItemKey, value: Bytes) -> Result<bool> {
        check_item_key(key)?;
        check_value(&value)?;
        self.0.put_if_absent(key, value).await
    }

    async fn put_batch(&self, items: Vec<(ItemKey, Bytes, Condition)>) -> Result<Vec<Option<u64>>> {
        // The whole batch before any of it: an engine that writes item by item must not have
        // written the first items of a batch whose last one is refused.
        for (i, (key, value, _)) in items.iter().enumerate() {
            check_item_key(key)
                .and_then(|()| check_value(value))
                .map_err(|e| e.context(format!("item {i} of the batch ({key})")))?;
        }
        self.0.put_batch(items).await
    }

    async fn get(&self, key: &ItemKey) -> Result<Option<Item>> {
        check_item_key(key)?;
        self.0.get(key).await
    }

    async fn delete(&self, key: &ItemKey, condition: Condition) -> Result<bool> {
        check_item_key(key)?;
        self.0.delete(key, condition).await
    }

    async fn add(&self, key: &ItemKey, delta: i64) -> Result<i64> {
        check_item_key(key)?;
        self.0.add(key, delta).await
    }

    async fn list(&self, partition: &str) -> Result<Vec<(String, Item)>> {
        check_key("partition", partition)?;
        self.0.list(partition).await
    }

    async fn list_page(&self, page: Page<'_>) -> Result<Vec<(String, Item)>> {
        check_page(&page)?;
        self.0.list_page(page).await
    }
}
