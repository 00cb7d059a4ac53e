//! The `Queue` service: SQS semantics (at-least-once delivery, visibility timeouts, FIFO groups,
//! deduplication, dead-letter queues), written once for every engine.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::names::QueueName;

/// The most messages one send, receive or delete call takes. SQS takes 10 a call; engines on
/// such services split a larger batch into several calls.
pub const MAX_BATCH: usize = 1000;
/// The most attributes one message carries (as in SQS).
pub const MAX_ATTRIBUTES: usize = 10;
/// The default and the largest allowed message size (body plus attribute names and values).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The largest message size a queue can be configured for (as in SQS).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// The longest visibility timeout (as in SQS).
pub const MAX_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// The longest long-poll wait of one receive (as in SQS).
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// The longest delivery delay of one message (as in SQS).
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// The window in which a FIFO queue drops a message whose deduplication id it has seen.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);
/// The shortest and the longest retention (as in SQS).
pub const RETENTION_RANGE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(14 * 24 * 3600));
/// The largest `max_receives` of a dead-letter policy (as in SQS).
pub const MAX_RECEIVES_LIMIT: u32 = 1000;
/// The longest FIFO group id or deduplication id (as in SQS).
pub const MAX_ID_LEN: usize = 128;

/// Message attributes: string names to string values.
pub type Attributes = BTreeMap<String, String>;

/// Where a queue sends a message that was received too often without being deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The dead-letter queue; it must exist and be of the same type (FIFO or not).
    pub queue: QueueName,
    /// A message received this many times and not deleted moves there on its next receive.
    pub max_receives: u32,
}

/// A queue's settings. FIFO-ness comes from the name (`.fifo`), as in SQS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    /// How long a received message stays invisible unless the receive asks otherwise.
    pub visibility_timeout: Duration,
    /// How long an undeleted message is kept.
    pub retention: Duration,
    /// The largest message (body plus attributes) the queue accepts.
    pub max_message_bytes: usize,
    /// FIFO only: deduplicate on the SHA-256 of the body when a message has no deduplication id.
    pub content_based_dedup: bool,
    /// Dead-lettering, if any.
    pub dead_letter: Option<DeadLetter>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(30),
            retention: Duration::from_secs(4 * 24 * 3600),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            content_based_dedup: false,
            dead_letter: None,
        }
    }
}

impl QueueOptions {
    /// Checks the options for a queue called `name`; the error names the offending field.
    pub fn validate(&self, name: &QueueName) -> Result<()> {
        check_visibility(self.visibility_timeout)?;
        for (what, d) in [
            ("visibility_timeout", self.visibility_timeout),
            ("retention", self.retention),
        ] {
            // SQS keeps a queue's durations in whole seconds: a fraction would be honoured by
            // one engine and not by another.
            if d.subsec_nanos() != 0 {
                return Err(Error::invalid(format!(
                    "{what} {d:?} is not a whole number of seconds"
                )));
            }
        }
        let (lo, hi) = RETENTION_RANGE;
        if self.retention < lo || self.retention > hi {
            return Err(Error::invalid(format!(
                "retention {:?} is outside {lo:?} to {hi:?}",
                self.retention
            )));
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_BYTES {
            return Err(Error::invalid(format!(
                "max_message_bytes {} is outside 1 to {MAX_MESSAGE_BYTES}",
                self.max_message_bytes
            )));
        }
        if self.content_based_dedup && !name.is_fifo() {
            return Err(Error::invalid(format!(
                "content_based_dedup is for FIFO queues only; `{name}` does not end in .fifo"
            )));
        }
        if let Some(dl) = &self.dead_letter {
            if dl.max_receives == 0 || dl.max_receives > MAX_RECEIVES_LIMIT {
                return Err(Error::invalid(format!(
                    "max_receives {} is outside 1 to {MAX_RECEIVES_LIMIT}",
                    dl.max_receives
                )));
            }
            if dl.queue.is_fifo() != name.is_fifo() {
                return Err(Error::invalid(format!(
                    "dead-letter queue `{}` must be of the same type (FIFO or standard) as `{name}`",
                    dl.queue
                )));
            }
            if &dl.queue == name {
                return Err(Error::invalid(format!(
                    "queue `{name}` cannot be its own dead-letter queue"
                )));
            }
        }
        Ok(())
    }
}

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The payload; opaque bytes (large payloads belong in blobs, with the key here).
    pub body: Bytes,
    /// String attributes (at most [`MAX_ATTRIBUTES`]).
    pub attributes: Attributes,
    /// Standard queues only: the message becomes visible this long after it is sent.
    pub delay: Duration,
    /// FIFO only (required there): messages of one group are delivered in order, one batch at a time.
    pub group_id: Option<String>,
    /// FIFO only: a second message with the same id within [`DEDUP_WINDOW`] is accepted and dropped.
    pub dedup_id: Option<String>,
}

impl OutgoingMessage {
    /// A message with `body` and nothing else.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }

    /// Adds an attribute.
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Sets the FIFO message group.
    pub fn group(mut self, group_id: impl Into<String>) -> Self {
        self.group_id = Some(group_id.into());
        self
    }

    /// Sets the FIFO deduplication id.
    pub fn dedup_id(mut self, dedup_id: impl Into<String>) -> Self {
        self.dedup_id = Some(dedup_id.into());
        self
    }

    /// Delays delivery (standard queues).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The size counted against the queue's limit: body plus attribute names and values.
    pub fn size(&self) -> usize {
        self.body.len() + attributes_size(&self.attributes)
    }

    /// The rules that need the queue's stored options (its size limit, content-based
    /// deduplication): what an engine checks once it has read them; [`Self::check_shape`] was
    /// checked before, in front of every engine. The error names the field.
    pub fn check_against(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        if self.size() > options.max_message_bytes {
            return Err(Error::invalid(format!(
                "message of {} bytes is over the limit of queue `{queue}` ({} bytes); put large payloads in blobs",
                self.size(),
                options.max_message_bytes
            )));
        }
        if queue.is_fifo() && self.dedup_id.is_none() && !options.content_based_dedup {
            return Err(Error::invalid(format!(
                "dedup_id is required on FIFO queue `{queue}`, which has no content-based deduplication"
            )));
        }
        Ok(())
    }

    /// The rules that need no queue options: attributes, delay, and the FIFO fields against the
    /// queue's kind (what [`crate::validate`] checks in front of every engine).
    pub fn check_shape(&self, queue: &QueueName) -> Result<()> {
        check_attributes(&self.attributes)?;
        if self.delay > MAX_DELAY {
            return Err(Error::invalid(format!(
                "delay {:?} is over the limit of {MAX_DELAY:?}",
                self.delay
            )));
        }
        if queue.is_fifo() {
            if !self.delay.is_zero() {
                return Err(Error::invalid(format!(
                    "delay is not supported per message on FIFO queue `{queue}`"
                )));
            }
            let group = self.group_id.as_deref().ok_or_else(|| {
                Error::invalid(format!("group_id is required on FIFO queue `{queue}`"))
            })?;
            check_id("group_id", group)?;
            if let Some(id) = &self.dedup_id {
                check_id("dedup_id", id)?;
            }
        } else if self.group_id.is_some() || self.dedup_id.is_some() {
            return Err(Error::invalid(format!(
                "group_id and dedup_id are for FIFO queues only; `{queue}` does not end in .fifo"
            )));
        }
        Ok(())
    }
}

/// The size of attribute names and values in bytes.
pub fn attributes_size(attributes: &Attributes) -> usize {
    attributes.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// Checks attribute count and names.
pub fn check_attributes(attributes: &Attributes) -> Result<()> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(Error::invalid(format!(
            "{} attributes is over the limit of {MAX_ATTRIBUTES}",
            attributes.len()
        )));
    }
    if let Some(name) = attributes.keys().find(|k| k.is_empty() || k.len() > 256) {
        return Err(Error::invalid(format!(
            "attribute name `{name}` must be 1 to 256 bytes"
        )));
    }
    Ok(())
}

fn check_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(format!(
            "{field} `{id}` must be 1 to {MAX_ID_LEN} printable ASCII characters"
        )));
    }
    Ok(())
}

/// Checks a visibility timeout (0 to 12 hours).
pub fn check_visibility(timeout: Duration) -> Result<()> {
    if timeout > MAX_VISIBILITY_TIMEOUT {
        return Err(Error::invalid(format!(
            "visibility timeout {timeout:?} is over the limit of {MAX_VISIBILITY_TIMEOUT:?} (12 h)"
        )));
    }
    Ok(())
}

/// Checks a batch's size (1 to [`MAX_BATCH`]).
pub fn check_batch(what: &str, len: usize) -> Result<()> {
    if len == 0 || len > MAX_BATCH {
        return Err(Error::invalid(format!(
            "{what} batch of {len} is outside 1 to {MAX_BATCH}"
        )));
    }
    Ok(())
}

/// What one receive asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveRequest {
    /// At most this many messages (1 to [`MAX_BATCH`]).
    pub max_messages: usize,
    /// Overrides the queue's visibility timeout for these deliveries.
    pub visibility_timeout: Option<Duration>,
    /// Long poll: wait up to this long (0 to 20 s) for a first message when none is visible.
    pub wait: Duration,
}

impl ReceiveRequest {
    /// Up to `max_messages`, no wait, the queue's visibility timeout.
    pub fn new(max_messages: usize) -> Self {
        Self {
            max_messages,
            visibility_timeout: None,
            wait: Duration::ZERO,
        }
    }

    /// Sets the long-poll wait.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Sets the visibility timeout of these deliveries.
    pub fn visibility(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout);
        self
    }

    /// Checks the limits; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_batch("receive", self.max_messages)?;
        if let Some(v) = self.visibility_timeout {
            check_visibility(v)?;
        }
        if self.wait > MAX_WAIT {
            return Err(Error::invalid(format!(
                "wait {:?} is over the limit of {MAX_WAIT:?}",
                self.wait
            )));
        }
        Ok(())
    }
}

/// Proof of one delivery of one message; deleting or changing visibility needs the latest one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt(pub String);

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One delivery of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message's id, the same on every delivery (and in the dead-letter queue).
    pub message_id: String,
    /// This delivery's receipt.
    pub receipt: Receipt,
    /// The payload.
    pub body: Bytes,
    /// The attributes it was sent with.
    pub attributes: Attributes,
    /// How many times the message has been received, this time included (1 on the first).
    pub receive_count: u32,
    /// When it was first sent.
    pub sent_at: SystemTime,
    /// The FIFO group, on FIFO queues.
    pub group_id: Option<String>,
}

/// Approximate counts of a queue's messages (as SQS's `ApproximateNumberOfMessages*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Depth {
    /// Ready to be received.
    pub visible: u64,
    /// Received and neither deleted nor visible again yet.
    pub in_flight: u64,
    /// Sent with a delay that has not passed yet.
    pub delayed: u64,
}

/// A queue service with SQS semantics. Every engine passes the same conformance suite.
///
/// Delivery is at least once: a received message that is not deleted before its visibility
/// timeout ends is delivered again, with its receive count one higher.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Creates a queue. Creating an existing queue with the same options succeeds and changes
    /// nothing; with different options it fails with `Conflict`. A dead-letter queue named in the
    /// options must already exist.
    async fn create_queue(&self, name: &QueueName, options: &QueueOptions) -> Result<()>;

    /// Deletes a queue and every message in it; `NotFound` if there is none.
    async fn delete_queue(&self, name: &QueueName) -> Result<()>;

    /// The names of every queue, sorted.
    async fn list_queues(&self) -> Result<Vec<QueueName>>;

    /// A queue's options; `NotFound` if there is none.
    async fn queue_options(&self, name: &QueueName) -> Result<QueueOptions>;

    /// Sends a batch (1 to [`MAX_BATCH`]). Every message is validated first: one invalid message
    /// fails the call before any is sent. Returns each message's id in order. Once this returns
    /// `Ok`, the messages survive a crash of every process using the engine. On a FIFO queue a
    /// message whose deduplication id was seen within [`DEDUP_WINDOW`] is accepted and dropped,
    /// and its id is that of the first.
    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<String>>;

    /// Sends one message; see [`Queue::send_batch`].
    async fn send(&self, queue: &QueueName, message: OutgoingMessage) -> Result<String> {
        let mut ids = self.send_batch(queue, vec![message]).await?;
        ids.pop()
            .ok_or_else(|| Error::internal("send returned no message id"))
    }

    /// Receives up to `max_messages` visible messages, each hidden for the visibility timeout
    /// and carrying a fresh receipt. Waits up to `wait` for a first message when none is visible,
    /// without busy-looping. On a FIFO queue, messages come in send order within a group, and a
    /// group with a message in flight delivers nothing more until that message is deleted or
    /// visible again. A message already received `max_receives` times moves to the dead-letter
    /// queue instead of being delivered.
    async fn receive(&self, queue: &QueueName, request: ReceiveRequest) -> Result<Vec<Delivery>>;

    /// Deletes (acknowledges) the delivered message. Idempotent: a receipt for a message already
    /// deleted, or a stale receipt (the message has since been delivered again), succeeds and
    /// changes nothing, so a slow consumer can never delete a newer delivery.
    async fn delete(&self, queue: &QueueName, receipt: &Receipt) -> Result<()> {
        self.delete_batch(queue, std::slice::from_ref(receipt))
            .await
    }

    /// Deletes a batch of deliveries (1 to [`MAX_BATCH`]); see [`Queue::delete`].
    async fn delete_batch(&self, queue: &QueueName, receipts: &[Receipt]) -> Result<()>;

    /// Hides the delivered message for `timeout` from now (extend a lease), or makes it visible
    /// at once with zero (release). `NotFound` if the receipt is stale or the message is gone:
    /// the caller has lost the message and must not act as its owner.
    async fn change_visibility(
        &self,
        queue: &QueueName,
        receipt: &Receipt,
        timeout: Duration,
    ) -> Result<()>;

    /// Approximate counts of visible, in-flight and delayed messages.
    async fn depth(&self, queue: &QueueName) -> Result<Depth>;

    /// Deletes every message of the queue, keeping the queue.
    async fn purge(&self, queue: &QueueName) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    /// Every rule a send meets: the shape (checked in front of every engine), then the queue's
    /// options (checked by the engine).
    trait Validate {
        fn validate(&self, queue: &QueueName, options: &QueueOptions) -> Result<()>;
    }

    impl Validate for OutgoingMessage {
        fn validate(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
            self.check_shape(queue)?;
            self.check_against(queue, options)
        }
    }

    fn name(s: &str) -> QueueName {
        QueueName::new(s).unwrap()
    }

    #[test]
    fn message_validation_names_the_field() {
        let std_q = name("q");
        let opts = QueueOptions::default();
        let big = OutgoingMessage::new(vec![0u8; DEFAULT_MAX_MESSAGE_BYTES + 1]);
        assert!(big
            .validate(&std_q, &opts)
            .unwrap_err()
            .to_string()
            .contains("over the limit"));
        let grouped = OutgoingMessage::new("x").group("g");
        assert!(grouped
            .validate(&std_q, &opts)
            .unwrap_err()
            .to_string()
            .contains("FIFO"));
        let fifo = name("q.fifo");
        let no_group = OutgoingMessage::new("x").dedup_id("d");
        assert!(no_group
            .validate(&fifo, &opts)
            .unwrap_err()
            .to_string()
            .contains("group_id"));
        let no_dedup = OutgoingMessage::new("x").group("g");
        assert!(no_dedup
            .validate(&fifo, &opts)
            .unwrap_err()
            .to_string()
            .contains("dedup_id"));
        let content = QueueOptions {
            content_based_dedup: true,
            ..QueueOptions::default()
        };
        assert!(no_dedup.validate(&fifo, &content).is_ok());
        let mut many = OutgoingMessage::new("x");
        for i in 0..=MAX_ATTRIBUTES {
            many = many.attribute(format!("a{i}"), "v");
        }
        assert!(many
            .validate(&std_q, &opts)
            .unwrap_err()
            .to_string()
            .contains("attributes"));
        let late = OutgoingMessage::new("x").delay(MAX_DELAY + Duration::from_secs(1));
        assert_eq!(
            late.validate(&std_q, &opts).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn option_and_request_limits() {
        let q = name("q");
        let long = QueueOptions {
            visibility_timeout: MAX_VISIBILITY_TIMEOUT + Duration::from_secs(1),
            ..Default::default()
        };
        assert!(long
            .validate(&q)
            .unwrap_err()
            .to_string()
            .contains("visibility timeout"));
        let big = QueueOptions {
            max_message_bytes: MAX_MESSAGE_BYTES + 1,
            ..Default::default()
        };
        assert!(big
            .validate(&q)
            .unwrap_err()
            .to_string()
            .contains("max_message_bytes"));
        let mixed = QueueOptions {
            dead_letter: Some(DeadLetter {
                queue: name("dlq.fifo"),
                max_receives: 3,
            }),
            ..Default::default()
        };
        assert!(mixed
            .validate(&q)
            .unwrap_err()
            .to_string()
            .contains("same type"));
        assert!(ReceiveRequest::new(0).validate().is_err());
        assert!(ReceiveRequest::new(MAX_BATCH + 1).validate().is_err());
        let wait = ReceiveRequest::new(1)
            .wait(Duration::from_secs(21))
            .validate()
            .unwrap_err();
        assert!(wait.to_string().contains("wait"));
    }
}
