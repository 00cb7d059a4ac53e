//! `Queue` on SQS: batches of any size split into calls of 10, long polls, visibility, FIFO
//! groups and deduplication, redrive to a dead-letter queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use nimbus_core::queue::Attributes;
use nimbus_core::{
    DeadLetter, Delivery, Depth, Error, ErrorKind, OutgoingMessage, Queue, QueueName, QueueOptions,
    Receipt, ReceiveRequest, Result,
};

use crate::body::{self, WireBody};
use crate::error::{kind_of_code, malformed, missing_is_named, sdk_error};
use crate::{ceil_secs, Clients};

/// The most entries of one SQS batch call.
const SQS_BATCH: usize = 10;
/// The most bytes of one SQS batch call's messages together.
const SQS_BATCH_BYTES: usize = 256 * 1024;
/// The most SQS calls one engine call keeps in flight.
const PARALLEL_CALLS: usize = 8;
/// How often entries that failed on the service's side are sent again before giving up.
const ENTRY_RETRIES: u32 = 4;

/// What the engine remembers of a queue: its URL and the options its messages are checked against.
#[derive(Debug, Clone)]
struct QueueInfo {
    url: String,
    options: QueueOptions,
}

/// SQS queues of one deployment.
#[derive(Debug)]
pub struct SqsQueue {
    clients: Arc<Clients>,
    known: Mutex<HashMap<QueueName, QueueInfo>>,
    /// SQS calls one receive or delete keeps in flight.
    parallel_calls: usize,
}

impl SqsQueue {
    /// The queues of the deployment whose clients these are.
    pub fn new(clients: Arc<Clients>) -> Self {
        // Emulators are not atomic across threads: moto hands one message to two concurrent
        // receives, and two concurrent deletes on one queue each rewrite its message list from
        // what they read, so one undoes the other (the message comes back, in flight, though
        // both calls succeeded). Against an endpoint override, calls on one queue go one by one.
        let parallel_calls = if clients.endpoint().is_some() {
            1
        } else {
            PARALLEL_CALLS
        };
        Self {
            clients,
            known: Mutex::new(HashMap::new()),
            parallel_calls,
        }
    }

    /// The SQS name of `name`: the deployment prefix in front.
    fn sqs_name(&self, name: &QueueName) -> Result<String> {
        let full = format!("{}{}", self.clients.prefix, name);
        if full.len() > 80 {
            return Err(Error::invalid(format!(
                "queue name `{full}` (prefix `{}` and `{name}`) is {} characters; SQS allows 80",
                self.clients.prefix,
                full.len()
            )));
        }
        Ok(full)
    }

    fn remember(&self, name: &QueueName, info: QueueInfo) {
        if let Ok(mut known) = self.known.lock() {
            known.insert(name.clone(), info);
        }
    }

    fn forget(&self, name: &QueueName) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(name);
        }
    }

    /// The queue's URL and options, asked of SQS once per process.
    async fn info(&self, name: &QueueName) -> Result<QueueInfo> {
        if let Some(info) = self.known.lock().ok().and_then(|k| k.get(name).cloned()) {
            return Ok(info);
        }
        let url = self.url(name).await?;
        let options = self.read_options(name, &url).await?;
        let info = QueueInfo { url, options };
        self.remember(name, info.clone());
        Ok(info)
    }

    /// The queues tagged as this deployment's (`aws down` and `aws status` act on these only: a
    /// name prefix alone would also match a deployment whose prefix extends this one's).
    pub async fn deployment_queues(&self) -> Result<Vec<QueueName>> {
        let mut ours = Vec::new();
        for name in self.list_queues().await? {
            let url = self.url(&name).await?;
            let tags = self
                .clients
                .sqs
                .list_queue_tags()
                .queue_url(url)
                .send()
                .await
                .map_err(|e| self.queue_error(&name, "read the tags of", e))?
                .tags
                .unwrap_or_default();
            if tags.get(crate::DEPLOYMENT_TAG) == Some(&self.clients.prefix) {
                ours.push(name);
            }
        }
        Ok(ours)
    }

    async fn url(&self, name: &QueueName) -> Result<String> {
        let out = self
            .clients
            .sqs
            .get_queue_url()
            .queue_name(self.sqs_name(name)?)
            .send()
            .await
            .map_err(|e| self.queue_error(name, "look up", e))?;
        out.queue_url
            .ok_or_else(|| malformed(format!("look up queue `{name}`"), "queue URL"))
    }

    /// Maps an SQS error about `name`, forgetting the queue when SQS says it is gone.
    fn queue_error<E>(
        &self,
        name: &QueueName,
        action: &str,
        err: aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
    ) -> Error
    where
        E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let err = sdk_error(format!("{action} queue `{name}`"), err);
        if err.kind() == ErrorKind::NotFound {
            self.forget(name);
        }
        missing_is_named(err, format!("queue `{name}`"))
    }

    async fn attributes(
        &self,
        name: &QueueName,
        url: &str,
        which: &[QueueAttributeName],
    ) -> Result<HashMap<QueueAttributeName, String>> {
        let out = self
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(which.to_vec()))
            .send()
            .await
            .map_err(|e| self.queue_error(name, "read", e))?;
        Ok(out.attributes.unwrap_or_default())
    }

    /// The queue's URL and ARN; `NotFound` names the queue.
    pub(crate) async fn url_and_arn(&self, name: &QueueName) -> Result<(String, String)> {
        let url = self.url(name).await?;
        let mut attrs = self
            .attributes(name, &url, &[QueueAttributeName::QueueArn])
            .await?;
        let arn = attrs
            .remove(&QueueAttributeName::QueueArn)
            .ok_or_else(|| malformed(format!("read queue `{name}`"), "QueueArn"))?;
        Ok((url, arn))
    }

    async fn read_options(&self, name: &QueueName, url: &str) -> Result<QueueOptions> {
        let attrs = self
            .attributes(name, url, &[QueueAttributeName::All])
            .await?;
        let secs = |key: QueueAttributeName, default: Duration| {
            attrs
                .get(&key)
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(default, Duration::from_secs)
        };
        let defaults = QueueOptions::default();
        let dead_letter = match attrs.get(&QueueAttributeName::RedrivePolicy) {
            Some(policy) if !policy.is_empty() => Some(self.parse_redrive(name, policy)?),
            _ => None,
        };
        Ok(QueueOptions {
            visibility_timeout: secs(
                QueueAttributeName::VisibilityTimeout,
                defaults.visibility_timeout,
            ),
            retention: secs(
                QueueAttributeName::MessageRetentionPeriod,
                defaults.retention,
            ),
            max_message_bytes: attrs
                .get(&QueueAttributeName::MaximumMessageSize)
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.max_message_bytes),
            content_based_dedup: attrs
                .get(&QueueAttributeName::ContentBasedDeduplication)
                .is_some_and(|v| v == "true"),
            dead_letter,
        })
    }

    fn parse_redrive(&self, name: &QueueName, policy: &str) -> Result<DeadLetter> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Redrive {
            dead_letter_target_arn: String,
            max_receive_count: serde_json::Value,
        }
        let bad = || {
            Error::internal(format!(
                "queue `{name}` has a redrive policy nimbus cannot read: {policy}"
            ))
        };
        let redrive: Redrive = serde_json::from_str(policy).map_err(|_| bad())?;
        let target = redrive
            .dead_letter_target_arn
            .rsplit(':')
            .next()
            .and_then(|full| full.strip_prefix(self.clients.prefix.as_str()))
            .ok_or_else(bad)?;
        let max_receives = match &redrive.max_receive_count {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(bad)?;
        Ok(DeadLetter {
            queue: QueueName::new(target)?,
            max_receives,
        })
    }

    async fn create_attributes(
        &self,
        name: &QueueName,
        options: &QueueOptions,
    ) -> Result<HashMap<QueueAttributeName, String>> {
        // Whole seconds: the core rules refuse options with a fraction of one.
        let mut attrs = HashMap::from([
            (
                QueueAttributeName::VisibilityTimeout,
                options.visibility_timeout.as_secs().to_string(),
            ),
            (
                QueueAttributeName::MessageRetentionPeriod,
                options.retention.as_secs().to_string(),
            ),
            (
                QueueAttributeName::MaximumMessageSize,
                options.max_message_bytes.to_string(),
            ),
        ]);
        if name.is_fifo() {
            attrs.insert(QueueAttributeName::FifoQueue, "true".into());
            attrs.insert(
                QueueAttributeName::ContentBasedDeduplication,
                options.content_based_dedup.to_string(),
            );
        }
        if let Some(dl) = &options.dead_letter {
            let (_, arn) = self.url_and_arn(&dl.queue).await.map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    Error::not_found(format!(
                        "dead-letter queue `{}` of `{name}` does not exist",
                        dl.queue
                    ))
                } else {
                    e
                }
            })?;
            let policy = serde_json::json!({
                "deadLetterTargetArn": arn,
                "maxReceiveCount": dl.max_receives,
            });
            attrs.insert(QueueAttributeName::RedrivePolicy, policy.to_string());
        }
        Ok(attrs)
    }

    /// Sends one SQS batch call's entries, sending again those that failed on the service's
    /// side; returns the message ids in order.
    async fn send_chunk(
        &self,
        name: &QueueName,
        url: &str,
        chunk: Vec<(usize, WireMessage)>,
    ) -> Result<Vec<(usize, String)>> {
        let mut pending = chunk;
        let mut sent = Vec::with_capacity(pending.len());
        for attempt in 0..=ENTRY_RETRIES {
            let entries = pending
                .iter()
                .map(|(i, m)| m.entry(*i))
                .collect::<Result<Vec<_>>>()?;
            let out = self
                .clients
                .sqs
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| self.queue_error(name, "send to", e))?;
            for ok in out.successful {
                let index = parse_entry_id(&ok.id)?;
                sent.push((index, ok.message_id));
            }
            let mut retry = Vec::new();
            for failed in out.failed {
                let index = parse_entry_id(&failed.id)?;
                let why = format!(
                    "send to queue `{name}`: message {index}: {}: {}",
                    failed.code,
                    failed.message.unwrap_or_default()
                );
                if failed.sender_fault || attempt == ENTRY_RETRIES {
                    let kind = if failed.sender_fault {
                        ErrorKind::InvalidInput
                    } else {
                        ErrorKind::Unavailable
                    };
                    return Err(Error::new(kind, why));
                }
                tracing::debug!(queue = %name, index, reason = %why, "sending an entry again");
                retry.push(index);
            }
            if retry.is_empty() {
                break;
            }
            pending.retain(|(i, _)| retry.contains(i));
            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
        }
        Ok(sent)
    }

    async fn delete_chunk(&self, queue: &QueueName, url: &str, chunk: Vec<Receipt>) -> Result<()> {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&r.0)
                    .build()
                    .map_err(|e| Error::internal("cannot build an SQS delete entry").with_source(e))
            })
            .collect::<Result<Vec<_>>>()?;
        let out = self
            .clients
            .sqs
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| self.queue_error(queue, "delete from", e))?;
        // A receipt SQS no longer honours (expired, or its message already gone) has nothing
        // left to delete: deletes are idempotent.
        let failed = out.failed.into_iter().find(|f| {
            !matches!(
                f.code.as_str(),
                "ReceiptHandleIsInvalid" | "InvalidParameterValue"
            )
        });
        match failed {
            None => Ok(()),
            Some(f) => Err(Error::new(
                kind_of_code(&f.code).unwrap_or(if f.sender_fault {
                    ErrorKind::InvalidInput
                } else {
                    ErrorKind::Unavailable
                }),
                format!(
                    "delete from queue `{queue}`: receipt {}: {}: {}",
                    f.id,
                    f.code,
                    f.message.unwrap_or_default()
                ),
            )),
        }
    }

    async fn receive_call(
        &self,
        name: &QueueName,
        url: &str,
        max: usize,
        wait: i32,
        visibility: Option<i32>,
    ) -> Result<Vec<Message>> {
        let out = self
            .clients
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(i32::try_from(max.min(SQS_BATCH)).unwrap_or(10))
            .wait_time_seconds(wait)
            .set_visibility_timeout(visibility)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| self.queue_error(name, "receive from", e))?;
        Ok(out.messages.unwrap_or_default())
    }
}

/// A message encoded for SQS, with what a batch entry needs.
#[derive(Debug, Clone)]
struct WireMessage {
    body: WireBody,
    delay: i32,
    group_id: Option<String>,
    dedup_id: Option<String>,
}

impl WireMessage {
    fn encode(message: OutgoingMessage) -> Result<Self> {
        Ok(Self {
            body: body::encode(&message.body, message.attributes)?,
            delay: ceil_secs(message.delay),
            group_id: message.group_id,
            dedup_id: message.dedup_id,
        })
    }

    fn size(&self) -> usize {
        self.body.text.len() + nimbus_core::queue::attributes_size(&self.body.attributes)
    }

    fn entry(&self, index: usize) -> Result<SendMessageBatchRequestEntry> {
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(index.to_string())
            .message_body(self.body.text.clone())
            .set_message_attributes(Some(string_attributes(&self.body.attributes)?))
            .set_message_group_id(self.group_id.clone())
            .set_message_deduplication_id(self.dedup_id.clone());
        if self.delay > 0 {
            entry = entry.delay_seconds(self.delay);
        }
        entry
            .build()
            .map_err(|e| Error::internal("cannot build an SQS batch entry").with_source(e))
    }
}

/// Attributes as SQS string attributes.
pub(crate) fn string_attributes(
    attributes: &Attributes,
) -> Result<HashMap<String, MessageAttributeValue>> {
    attributes
        .iter()
        .map(|(k, v)| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .map(|value| (k.clone(), value))
                .map_err(|e| Error::internal("cannot build an SQS attribute").with_source(e))
        })
        .collect()
}

fn parse_entry_id(id: &str) -> Result<usize> {
    id.parse().map_err(|_| {
        Error::internal(format!(
            "SQS answered for an entry `{id}` nimbus never sent"
        ))
    })
}

/// Splits `messages` into SQS batch calls: at most 10 entries and 256 KiB each, order kept.
fn chunk_for_sqs(messages: Vec<WireMessage>) -> Vec<Vec<(usize, WireMessage)>> {
    let mut chunks: Vec<Vec<(usize, WireMessage)>> = Vec::new();
    let mut bytes = 0;
    for (index, message) in messages.into_iter().enumerate() {
        let size = message.size();
        let full = chunks
            .last()
            .is_none_or(|c| c.len() == SQS_BATCH || bytes + size > SQS_BATCH_BYTES);
        if full {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(chunk) = chunks.last_mut() {
            chunk.push((index, message));
        }
    }
    chunks
}

/// A received message as a delivery; `None` (logged) for one SQS sent without an id or receipt.
/// A body that does not decode is handed out as it came, so its handler fails it and it reaches
/// the dead-letter queue, instead of failing the receive of the whole batch.
/// One copy of each message, the last received: a batch must not hold a message twice, and the
/// last copy's receipt is the live one. A message comes twice when its visibility lapses while
/// the follow-up receives of one call run (a slow call on a short timeout), or when an emulator
/// hands it to two concurrent calls (moto races; SQS does not).
fn latest_copies(mut got: Vec<Message>) -> Vec<Message> {
    let mut seen = std::collections::HashSet::new();
    got.reverse();
    got.retain(|m| {
        m.message_id
            .as_ref()
            .is_none_or(|id| seen.insert(id.clone()))
    });
    got.reverse();
    got
}

fn delivery(queue: &QueueName, message: Message) -> Option<Delivery> {
    let system = message.attributes.unwrap_or_default();
    let attributes: Attributes = message
        .message_attributes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
        .collect();
    let text = message.body.unwrap_or_default();
    let (body, attributes) = match body::decode(text.clone(), attributes.clone()) {
        Ok(decoded) => decoded,
        Err(e) => {
            tracing::warn!(queue = %queue, error = %e, "a message body does not decode; delivered as received");
            (Bytes::from(text), attributes)
        }
    };
    let (Some(message_id), Some(receipt)) = (message.message_id, message.receipt_handle) else {
        tracing::warn!(queue = %queue, "SQS sent a message without an id or a receipt; skipped");
        return None;
    };
    let number =
        |key: MessageSystemAttributeName| system.get(&key).and_then(|v| v.parse::<u64>().ok());
    Some(Delivery {
        message_id,
        receipt: Receipt(receipt),
        body,
        attributes,
        receive_count: number(MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1),
        sent_at: number(MessageSystemAttributeName::SentTimestamp)
            .map_or(SystemTime::UNIX_EPOCH, |ms| {
                SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
            }),
        group_id: system
            .get(&MessageSystemAttributeName::MessageGroupId)
            .cloned(),
    })
}

#[async_trait]
impl Queue for SqsQueue {
    async fn create_queue(&self, name: &QueueName, options: &QueueOptions) -> Result<()> {
        let attributes = self.create_attributes(name, options).await?;
        let out = self
            .clients
            .sqs
            .create_queue()
            .queue_name(self.sqs_name(name)?)
            .set_attributes(Some(attributes))
            .tags(crate::DEPLOYMENT_TAG, &self.clients.prefix)
            .send()
            .await
            .map_err(|e| sdk_error(format!("create queue `{name}`"), e))?;
        let url = out
            .queue_url
            .ok_or_else(|| malformed(format!("create queue `{name}`"), "queue URL"))?;
        // SQS refuses other attributes for an existing queue; an emulator may not: check.
        let actual = self.read_options(name, &url).await?;
        if &actual != options {
            return Err(Error::conflict(format!(
                "queue `{name}` exists with other options: {actual:?}"
            )));
        }
        self.remember(
            name,
            QueueInfo {
                url,
                options: actual,
            },
        );
        Ok(())
    }

    async fn delete_queue(&self, name: &QueueName) -> Result<()> {
        let url = self.url(name).await?;
        self.clients
            .sqs
            .delete_queue()
            .queue_url(url)
            .send()
            .await
            .map_err(|e| self.queue_error(name, "delete", e))?;
        self.forget(name);
        Ok(())
    }

    async fn list_queues(&self) -> Result<Vec<QueueName>> {
        let prefix = self.clients.prefix.clone();
        let pages = self
            .clients
            .sqs
            .list_queues()
            .queue_name_prefix(&prefix)
            .max_results(1000)
            .into_paginator()
            .send();
        let urls: Vec<String> = pages
            .try_collect()
            .await
            .map_err(|e| sdk_error("list queues", e))?
            .into_iter()
            .flat_map(|page| page.queue_urls.unwrap_or_default())
            .collect();
        let mut names: Vec<QueueName> = urls
            .iter()
            .filter_map(|url| url.rsplit('/').next()?.strip_prefix(prefix.as_str()))
            .filter_map(|stem| QueueName::new(stem).ok())
            .collect();
        names.sort();
        Ok(names)
    }

    async fn queue_options(&self, name: &QueueName) -> Result<QueueOptions> {
        let url = self.url(name).await?;
        self.read_options(name, &url).await
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<String>> {
        let info = self.info(queue).await?;
        for m in &messages {
            m.check_against(queue, &info.options)?;
        }
        let wire = messages
            .into_iter()
            .map(WireMessage::encode)
            .collect::<Result<Vec<_>>>()?;
        // Encoding can grow a body (base64): check again, before anything is sent.
        if let Some((i, m)) = wire
            .iter()
            .enumerate()
            .find(|(_, m)| m.size() > info.options.max_message_bytes)
        {
            return Err(Error::invalid(format!(
                "message {i} is {} bytes once encoded for SQS (binary bodies travel as base64), over the limit of queue `{queue}` ({} bytes); put large payloads in blobs",
                m.size(),
                info.options.max_message_bytes
            )));
        }
        let count = wire.len();
        // FIFO order across calls needs one call after the other.
        let parallel = if queue.is_fifo() { 1 } else { PARALLEL_CALLS };
        let sent: Vec<Vec<(usize, String)>> = futures::stream::iter(chunk_for_sqs(wire))
            .map(|chunk| self.send_chunk(queue, &info.url, chunk))
            .buffered(parallel)
            .try_collect()
            .await?;
        let mut ids = vec![String::new(); count];
        for (index, id) in sent.into_iter().flatten() {
            if let Some(slot) = ids.get_mut(index) {
                *slot = id;
            }
        }
        if ids.iter().any(String::is_empty) {
            return Err(Error::internal(format!(
                "send to queue `{queue}`: SQS did not answer for every message"
            )));
        }
        Ok(ids)
    }

    async fn receive(&self, queue: &QueueName, request: ReceiveRequest) -> Result<Vec<Delivery>> {
        let info = self.info(queue).await?;
        let visibility = request.visibility_timeout.map(ceil_secs);
        let wanted = request.max_messages;
        let mut got = self
            .receive_call(
                queue,
                &info.url,
                wanted,
                ceil_secs(request.wait),
                visibility,
            )
            .await?;
        // A full first answer means there may be more: ask for the rest without waiting.
        let mut last_full = got.len() == wanted.min(SQS_BATCH);
        while last_full && got.len() < wanted {
            let remaining = wanted - got.len();
            let asks: Vec<usize> = (0..remaining.div_ceil(SQS_BATCH).min(self.parallel_calls))
                .map(|i| (remaining - i * SQS_BATCH).min(SQS_BATCH))
                .collect();
            let answers = futures::future::join_all(
                asks.iter()
                    .map(|&n| self.receive_call(queue, &info.url, n, 0, visibility)),
            )
            .await;
            last_full = true;
            for (answer, &asked) in answers.into_iter().zip(&asks) {
                match answer {
                    Ok(messages) => {
                        last_full &= messages.len() == asked;
                        got.extend(messages);
                    }
                    // What was received is in flight now: hand it out rather than lose it.
                    Err(e) => {
                        tracing::warn!(queue = %queue, error = %e, "a follow-up receive failed");
                        last_full = false;
                    }
                }
            }
        }
        Ok(latest_copies(got)
            .into_iter()
            .filter_map(|m| delivery(queue, m))
            .collect())
    }

    async fn delete_batch(&self, queue: &QueueName, receipts: &[Receipt]) -> Result<()> {
        let info = self.info(queue).await?;
        let chunks: Vec<Vec<Receipt>> = receipts
            .chunks(SQS_BATCH)
            .map(<[Receipt]>::to_vec)
            .collect();
        // Every chunk is tried, whatever happens to the others; the first error is reported.
        let results: Vec<Result<()>> = futures::stream::iter(chunks)
            .map(|chunk| self.delete_chunk(queue, &info.url, chunk))
            .buffer_unordered(self.parallel_calls)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn change_visibility(
        &self,
        queue: &QueueName,
        receipt: &Receipt,
        timeout: Duration,
    ) -> Result<()> {
        let info = self.info(queue).await?;
        self.clients
            .sqs
            .change_message_visibility()
            .queue_url(info.url)
            .receipt_handle(&receipt.0)
            .visibility_timeout(ceil_secs(timeout))
            .send()
            .await
            .map_err(|e| {
                let err = self.queue_error(queue, "change visibility in", e);
                // SQS says "not in flight" or "invalid receipt" for a delivery that is over.
                if err.kind() == ErrorKind::InvalidInput {
                    Error::not_found(format!(
                        "receipt is stale or its message is gone from queue `{queue}`"
                    ))
                    .with_source(err)
                } else {
                    err
                }
            })?;
        Ok(())
    }

    async fn depth(&self, queue: &QueueName) -> Result<Depth> {
        let info = self.info(queue).await?;
        let attrs = self
            .attributes(
                queue,
                &info.url,
                &[
                    QueueAttributeName::ApproximateNumberOfMessages,
                    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                    QueueAttributeName::ApproximateNumberOfMessagesDelayed,
                ],
            )
            .await?;
        let count = |key| attrs.get(&key).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Depth {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }

    async fn purge(&self, queue: &QueueName) -> Result<()> {
        let info = self.info(queue).await?;
        self.clients
            .sqs
            .purge_queue()
            .queue_url(info.url)
            .send()
            .await
            .map_err(|e| self.queue_error(queue, "purge", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_received_twice_keeps_its_last_copy() {
        let message = |id: &str, receipt: &str| {
            Message::builder()
                .message_id(id)
                .receipt_handle(receipt)
                .build()
        };
        let got = latest_copies(vec![
            message("a", "a-old"),
            message("b", "b"),
            message("a", "a-new"),
            message("c", "c"),
        ]);
        let receipts: Vec<_> = got.iter().filter_map(|m| m.receipt_handle()).collect();
        assert_eq!(receipts, ["b", "a-new", "c"]);
    }

    fn wire(size: usize) -> WireMessage {
        WireMessage::encode(OutgoingMessage::new("x".repeat(size))).unwrap()
    }

    #[test]
    fn chunks_hold_10_entries_and_256_kib() {
        let chunks = chunk_for_sqs((0..25).map(|_| wire(10)).collect());
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
        assert_eq!(chunks[2][0].0, 20, "indexes follow the input");
        let big = chunk_for_sqs(vec![wire(100_000), wire(100_000), wire(100_000), wire(1)]);
        assert_eq!(big.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
        let huge = chunk_for_sqs(vec![wire(300_000), wire(1)]);
        assert_eq!(
            huge.iter().map(Vec::len).collect::<Vec<_>>(),
            [1, 1],
            "an oversized message goes alone"
        );
    }
}
