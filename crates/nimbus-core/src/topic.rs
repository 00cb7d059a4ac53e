//! The `Topic` service: SNS-style publish-subscribe that fans messages out to queues.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::names::{QueueName, TopicName};
use crate::queue::{check_attributes, Attributes};

/// The most keys of one filter (as in SNS filter policies).
pub const MAX_FILTER_KEYS: usize = 5;
/// The most value combinations of one filter (as in SNS).
pub const MAX_FILTER_COMBINATIONS: usize = 150;
/// The largest published message (as in SNS).
pub const MAX_PUBLISH_BYTES: usize = 256 * 1024;

/// A filter on message attributes: a message passes when, for every key, its attribute of that
/// name is present and equal to one of the listed values (SNS's exact string matching,
/// case-sensitive).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filter(pub BTreeMap<String, Vec<String>>);

impl Filter {
    /// A filter that passes messages whose `attribute` is one of `values`.
    pub fn on(
        attribute: impl Into<String>,
        values: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let mut map = BTreeMap::new();
        map.insert(
            attribute.into(),
            values.into_iter().map(Into::into).collect(),
        );
        Self(map)
    }

    /// Whether a message with `attributes` passes.
    pub fn matches(&self, attributes: &Attributes) -> bool {
        self.0
            .iter()
            .all(|(key, values)| attributes.get(key).is_some_and(|v| values.contains(v)))
    }

    /// Checks the SNS limits; the error names what is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.0.is_empty() {
            return Err(Error::invalid("filter has no keys"));
        }
        if self.0.len() > MAX_FILTER_KEYS {
            return Err(Error::invalid(format!(
                "filter has {} keys; the limit is {MAX_FILTER_KEYS}",
                self.0.len()
            )));
        }
        if let Some((key, _)) = self.0.iter().find(|(_, v)| v.is_empty()) {
            return Err(Error::invalid(format!(
                "filter key `{key}` lists no values"
            )));
        }
        let combinations: usize = self.0.values().map(Vec::len).product();
        if combinations > MAX_FILTER_COMBINATIONS {
            return Err(Error::invalid(format!(
                "filter has {combinations} value combinations; the limit is {MAX_FILTER_COMBINATIONS}"
            )));
        }
        Ok(())
    }
}

/// A queue's subscription to a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The engine's id for it.
    pub id: String,
    /// The topic.
    pub topic: TopicName,
    /// The queue that receives the topic's messages.
    pub queue: QueueName,
    /// Only messages that pass it are delivered; none means all.
    pub filter: Option<Filter>,
}

/// Checks a subscription: a standard queue (SNS standard topics refuse FIFO queues) and, if
/// there is one, a filter within SNS's limits.
pub fn check_subscribe(queue: &QueueName, filter: Option<&Filter>) -> Result<()> {
    if queue.is_fifo() {
        return Err(Error::invalid(format!(
            "FIFO queue `{queue}` cannot subscribe to a standard topic"
        )));
    }
    filter.map_or(Ok(()), Filter::validate)
}

/// Checks a message to publish.
pub fn check_publish(body: &Bytes, attributes: &Attributes) -> Result<()> {
    check_attributes(attributes)?;
    let size = body.len() + crate::queue::attributes_size(attributes);
    if size > MAX_PUBLISH_BYTES {
        return Err(Error::invalid(format!(
            "message of {size} bytes is over the topic limit of {MAX_PUBLISH_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A publish-subscribe service with SNS semantics and SQS subscribers with raw delivery.
#[async_trait]
pub trait Topic: Send + Sync {
    /// Creates a topic; creating an existing one succeeds and changes nothing.
    async fn create_topic(&self, name: &TopicName) -> Result<()>;

    /// Deletes a topic and its subscriptions; `NotFound` if there is none.
    async fn delete_topic(&self, name: &TopicName) -> Result<()>;

    /// Subscribes a standard queue (FIFO queues are refused, as with SNS standard topics). One
    /// subscription per topic and queue: subscribing again replaces the filter and keeps the id.
    async fn subscribe(
        &self,
        topic: &TopicName,
        queue: &QueueName,
        filter: Option<Filter>,
    ) -> Result<Subscription>;

    /// Removes a subscription; `NotFound` if there is none.
    async fn unsubscribe(&self, subscription_id: &str) -> Result<()>;

    /// The topic's subscriptions.
    async fn subscriptions(&self, topic: &TopicName) -> Result<Vec<Subscription>>;

    /// Publishes a message; every subscribed queue whose filter passes its attributes gets it as
    /// a raw message (the same body and attributes). Returns the message id. Once this returns
    /// `Ok`, every matching queue holds the message.
    async fn publish(
        &self,
        topic: &TopicName,
        body: Bytes,
        attributes: Attributes,
    ) -> Result<String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matches_any_listed_value_of_every_key() {
        let f = Filter::on("job_id", ["a", "b"]);
        let attrs = |v: &str| Attributes::from([("job_id".to_string(), v.to_string())]);
        assert!(f.matches(&attrs("a")));
        assert!(f.matches(&attrs("b")));
        assert!(!f.matches(&attrs("A")));
        assert!(!f.matches(&Attributes::new()));
    }

    #[test]
    fn filter_limits() {
        assert!(Filter::default().validate().is_err());
        assert!(Filter::on("k", Vec::<String>::new()).validate().is_err());
        let mut wide = Filter::default();
        for k in 0..6 {
            wide.0.insert(format!("k{k}"), vec!["v".into()]);
        }
        assert!(wide
            .validate()
            .unwrap_err()
            .to_string()
            .contains("limit is 5"));
        let mut combos = Filter::default();
        combos
            .0
            .insert("a".into(), (0..20).map(|i| i.to_string()).collect());
        combos
            .0
            .insert("b".into(), (0..8).map(|i| i.to_string()).collect());
        assert!(combos.validate().unwrap_err().to_string().contains("160"));
    }
}
