//! `Topic` on SNS: topics of the deployment, SQS subscriptions with raw message delivery and
//! filter policies, and the queue policy that lets the topic deliver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_sns::types::MessageAttributeValue;
use aws_sdk_sqs::types::QueueAttributeName;
use bytes::Bytes;
use nimbus_core::queue::Attributes;
use nimbus_core::{Error, ErrorKind, Filter, QueueName, Result, Subscription, Topic, TopicName};

use crate::body;
use crate::error::{malformed, missing_is_named, sdk_error};
use crate::queue::SqsQueue;
use crate::Clients;

/// SNS topics of one deployment.
#[derive(Debug)]
pub struct SnsTopic {
    clients: Arc<Clients>,
    /// Looks up the queues that subscribe (URL, ARN).
    queues: SqsQueue,
    arns: Mutex<HashMap<TopicName, String>>,
}

/// A subscription as SNS lists it.
struct Listed {
    arn: String,
    endpoint: String,
}

impl SnsTopic {
    /// The topics of the deployment whose clients these are.
    pub fn new(clients: Arc<Clients>) -> Self {
        Self {
            queues: SqsQueue::new(clients.clone()),
            clients,
            arns: Mutex::new(HashMap::new()),
        }
    }

    fn sns_name(&self, name: &TopicName) -> String {
        format!("{}{}", self.clients.prefix, name)
    }

    fn forget(&self, name: &TopicName) {
        if let Ok(mut arns) = self.arns.lock() {
            arns.remove(name);
        }
    }

    /// The topic's ARN; SNS has no lookup by name, so the list is searched once per process.
    async fn arn(&self, name: &TopicName) -> Result<String> {
        if let Some(arn) = self.arns.lock().ok().and_then(|a| a.get(name).cloned()) {
            return Ok(arn);
        }
        let suffix = format!(":{}", self.sns_name(name));
        let topics: Vec<String> = self
            .clients
            .sns
            .list_topics()
            .into_paginator()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_error("list topics", e))?
            .into_iter()
            .flat_map(|page| page.topics.unwrap_or_default())
            .filter_map(|t| t.topic_arn)
            .collect();
        let arn = topics
            .into_iter()
            .find(|arn| arn.ends_with(&suffix))
            .ok_or_else(|| Error::not_found(format!("topic `{name}` does not exist")))?;
        if let Ok(mut arns) = self.arns.lock() {
            arns.insert(name.clone(), arn.clone());
        }
        Ok(arn)
    }

    /// Maps an SNS error about topic `name`, forgetting its ARN when SNS says it is gone.
    fn topic_error<E>(
        &self,
        name: &TopicName,
        action: &str,
        err: aws_sdk_sns::error::SdkError<E, aws_sdk_sns::config::http::HttpResponse>,
    ) -> Error
    where
        E: aws_sdk_sns::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let err = sdk_error(format!("{action} topic `{name}`"), err);
        if err.kind() == ErrorKind::NotFound {
            self.forget(name);
        }
        missing_is_named(err, format!("topic `{name}`"))
    }

    async fn listed(&self, name: &TopicName, arn: &str) -> Result<Vec<Listed>> {
        self.clients
            .sns
            .list_subscriptions_by_topic()
            .topic_arn(arn)
            .into_paginator()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.topic_error(name, "list subscriptions of", e))
            .map(|pages| {
                pages
                    .into_iter()
                    .flat_map(|page| page.subscriptions.unwrap_or_default())
                    .filter(|s| s.protocol.as_deref() == Some("sqs"))
                    .filter_map(|s| {
                        Some(Listed {
                            arn: s.subscription_arn?,
                            endpoint: s.endpoint?,
                        })
                    })
                    .collect()
            })
    }

    /// Lets this deployment's topics send to the queue (AWS refuses SNS deliveries otherwise).
    async fn allow_topics(
        &self,
        queue: &QueueName,
        url: &str,
        queue_arn: &str,
        topic_arn: &str,
    ) -> Result<()> {
        let policy = queue_policy(queue_arn, topic_arn, &self.clients.prefix);
        self.clients
            .sqs
            .set_queue_attributes()
            .queue_url(url)
            .attributes(QueueAttributeName::Policy, policy)
            .send()
            .await
            .map_err(|e| sdk_error(format!("allow topics to send to queue `{queue}`"), e))?;
        Ok(())
    }

    async fn filter_of(&self, subscription_arn: &str) -> Result<Option<Filter>> {
        let attrs = self
            .clients
            .sns
            .get_subscription_attributes()
            .subscription_arn(subscription_arn)
            .send()
            .await
            .map_err(|e| sdk_error(format!("read subscription `{subscription_arn}`"), e))?
            .attributes
            .unwrap_or_default();
        match attrs.get("FilterPolicy").map(String::as_str) {
            None | Some("") | Some("{}") => Ok(None),
            Some(policy) => serde_json::from_str::<Filter>(policy).map(Some).map_err(|_| {
                Error::internal(format!(
                    "subscription `{subscription_arn}` has a filter policy nimbus cannot read: {policy}"
                ))
            }),
        }
    }
}

/// The queue policy that allows SNS topics named with the deployment's prefix, in the topic's
/// account and region, to send to the queue.
fn queue_policy(queue_arn: &str, topic_arn: &str, prefix: &str) -> String {
    let topics = match topic_arn.rsplit_once(':') {
        Some((account_part, _)) => format!("{account_part}:{prefix}*"),
        None => topic_arn.to_string(),
    };
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "nimbus-topics",
            "Effect": "Allow",
            "Principal": { "Service": "sns.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": { "ArnLike": { "aws:SourceArn": topics } }
        }]
    })
    .to_string()
}

fn filter_policy(filter: Option<&Filter>) -> Result<String> {
    match filter {
        // An empty policy object is how SNS removes a filter.
        None => Ok("{}".to_string()),
        Some(f) => serde_json::to_string(f)
            .map_err(|e| Error::internal("cannot encode a filter policy").with_source(e)),
    }
}

fn sns_attributes(attributes: &Attributes) -> Result<HashMap<String, MessageAttributeValue>> {
    attributes
        .iter()
        .map(|(k, v)| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .map(|value| (k.clone(), value))
                .map_err(|e| Error::internal("cannot build an SNS attribute").with_source(e))
        })
        .collect()
}

#[async_trait]
impl Topic for SnsTopic {
    async fn create_topic(&self, name: &TopicName) -> Result<()> {
        let arn = self
            .clients
            .sns
            .create_topic()
            .name(self.sns_name(name))
            .send()
            .await
            .map_err(|e| sdk_error(format!("create topic `{name}`"), e))?
            .topic_arn
            .ok_or_else(|| malformed(format!("create topic `{name}`"), "topic ARN"))?;
        if let Ok(mut arns) = self.arns.lock() {
            arns.insert(name.clone(), arn);
        }
        Ok(())
    }

    async fn delete_topic(&self, name: &TopicName) -> Result<()> {
        let arn = self.arn(name).await?;
        for sub in self.listed(name, &arn).await? {
            self.unsubscribe(&sub.arn).await?;
        }
        self.clients
            .sns
            .delete_topic()
            .topic_arn(arn)
            .send()
            .await
            .map_err(|e| self.topic_error(name, "delete", e))?;
        self.forget(name);
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &TopicName,
        queue: &QueueName,
        filter: Option<Filter>,
    ) -> Result<Subscription> {
        let topic_arn = self.arn(topic).await?;
        let (url, queue_arn) = self.queues.url_and_arn(queue).await?;
        self.allow_topics(queue, &url, &queue_arn, &topic_arn)
            .await?;
        let policy = filter_policy(filter.as_ref())?;
        let existing = self
            .listed(topic, &topic_arn)
            .await?
            .into_iter()
            .find(|s| s.endpoint == queue_arn);
        let id = match existing {
            Some(sub) => {
                self.clients
                    .sns
                    .set_subscription_attributes()
                    .subscription_arn(&sub.arn)
                    .attribute_name("FilterPolicy")
                    .attribute_value(policy)
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error(
                            format!("change the filter of `{queue}` on topic `{topic}`"),
                            e,
                        )
                    })?;
                sub.arn
            }
            None => {
                let mut request = self
                    .clients
                    .sns
                    .subscribe()
                    .topic_arn(&topic_arn)
                    .protocol("sqs")
                    .endpoint(&queue_arn)
                    .return_subscription_arn(true)
                    .attributes("RawMessageDelivery", "true");
                if filter.is_some() {
                    request = request.attributes("FilterPolicy", policy);
                }
                request
                    .send()
                    .await
                    .map_err(|e| self.topic_error(topic, &format!("subscribe `{queue}` to"), e))?
                    .subscription_arn
                    .ok_or_else(|| malformed("subscribe", "subscription ARN"))?
            }
        };
        Ok(Subscription {
            id,
            topic: topic.clone(),
            queue: queue.clone(),
            filter,
        })
    }

    async fn unsubscribe(&self, subscription_id: &str) -> Result<()> {
        let what = format!("subscription `{subscription_id}`");
        // SNS answers success for an unknown subscription; nimbus says NotFound.
        self.clients
            .sns
            .get_subscription_attributes()
            .subscription_arn(subscription_id)
            .send()
            .await
            .map_err(|e| {
                let err = sdk_error(format!("read {what}"), e);
                match err.kind() {
                    ErrorKind::NotFound | ErrorKind::InvalidInput => {
                        Error::not_found(format!("{what} does not exist")).with_source(err)
                    }
                    _ => err,
                }
            })?;
        self.clients
            .sns
            .unsubscribe()
            .subscription_arn(subscription_id)
            .send()
            .await
            .map_err(|e| sdk_error(format!("remove {what}"), e))?;
        Ok(())
    }

    async fn subscriptions(&self, topic: &TopicName) -> Result<Vec<Subscription>> {
        let arn = self.arn(topic).await?;
        let queue_prefix = format!(":{}", self.clients.prefix);
        let mut subs = Vec::new();
        for listed in self.listed(topic, &arn).await? {
            // Only this deployment's queues: the name after the account, without the prefix.
            let Some(queue) = listed
                .endpoint
                .rsplit_once(&queue_prefix)
                .and_then(|(_, stem)| QueueName::new(stem).ok())
            else {
                continue;
            };
            subs.push(Subscription {
                filter: self.filter_of(&listed.arn).await?,
                id: listed.arn,
                topic: topic.clone(),
                queue,
            });
        }
        Ok(subs)
    }

    async fn publish(
        &self,
        topic: &TopicName,
        body: Bytes,
        attributes: Attributes,
    ) -> Result<String> {
        let arn = self.arn(topic).await?;
        let wire = body::encode(&body, attributes)?;
        let out = self
            .clients
            .sns
            .publish()
            .topic_arn(arn)
            .message(wire.text)
            .set_message_attributes(Some(sns_attributes(&wire.attributes)?))
            .send()
            .await
            .map_err(|e| self.topic_error(topic, "publish to", e))?;
        out.message_id
            .ok_or_else(|| malformed(format!("publish to topic `{topic}`"), "message id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_policy_admits_the_deployment_topics_only() {
        let policy = queue_policy(
            "arn:aws:sqs:eu-west-1:111:nimbus-events-r1",
            "arn:aws:sns:eu-west-1:111:nimbus-events",
            "nimbus-",
        );
        let v: serde_json::Value = serde_json::from_str(&policy).unwrap();
        let statement = &v["Statement"][0];
        assert_eq!(
            statement["Resource"],
            "arn:aws:sqs:eu-west-1:111:nimbus-events-r1"
        );
        assert_eq!(
            statement["Condition"]["ArnLike"]["aws:SourceArn"],
            "arn:aws:sns:eu-west-1:111:nimbus-*"
        );
    }

    #[test]
    fn filters_become_sns_policies() {
        assert_eq!(filter_policy(None).unwrap(), "{}");
        let f = Filter::on("job_id", ["a", "b"]);
        assert_eq!(filter_policy(Some(&f)).unwrap(), r#"{"job_id":["a","b"]}"#);
    }
}
