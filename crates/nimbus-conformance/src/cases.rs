//! The conformance cases: each takes a fresh harness and panics with a message saying which
//! guarantee of the engine traits did not hold.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use nimbus_core::queue::{Attributes, MAX_BATCH};
use nimbus_core::{
    Condition, DeadLetter, Delivery, ErrorKind, Filter, ItemKey, OutgoingMessage, QueueName,
    QueueOptions, ReceiveRequest,
};
use object_store::path::Path as BlobPath;
use object_store::PutPayload;
use tokio::time::Instant;

use crate::Harness;

async fn recv(h: &Harness, q: &QueueName, n: usize, visibility: Duration) -> Vec<Delivery> {
    h.engine
        .queue
        .receive(q, ReceiveRequest::new(n).visibility(visibility))
        .await
        .unwrap()
}

async fn recv_wait(
    h: &Harness,
    q: &QueueName,
    n: usize,
    visibility: Duration,
    wait: Duration,
) -> Vec<Delivery> {
    let wait = wait.min(nimbus_core::queue::MAX_WAIT);
    h.engine
        .queue
        .receive(q, ReceiveRequest::new(n).visibility(visibility).wait(wait))
        .await
        .unwrap()
}

/// Long-polls until a receive hands out something or `bound` has passed: a slow server may need
/// several polls; an empty answer means nothing came in all of `bound`.
async fn recv_within(
    h: &Harness,
    q: &QueueName,
    n: usize,
    visibility: Duration,
    bound: Duration,
) -> Vec<Delivery> {
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = recv_wait(h, q, n, visibility, left.max(h.tick)).await;
        if !got.is_empty() || Instant::now() >= deadline {
            return got;
        }
    }
}

/// Receives until `count` distinct messages have come, deleting none. It waits as long as the
/// semantics allow, whatever the server's speed: until the visibility timeout is nearly over
/// (after it, the first messages received would come again). A message handed out twice before
/// its visibility timeout ran out fails the case.
async fn collect(h: &Harness, q: &QueueName, count: usize, visibility: Duration) -> Vec<Delivery> {
    let start = Instant::now();
    let mut got: Vec<Delivery> = Vec::new();
    while got.len() < count {
        // Whole ticks, and one to spare: a poll must end before the first message is visible again.
        let ticks_left = u32::try_from(
            visibility.saturating_sub(start.elapsed()).as_millis() / h.tick.as_millis().max(1),
        )
        .unwrap_or(u32::MAX);
        if ticks_left < 2 {
            break;
        }
        let wait = h.ticks((ticks_left - 1).min(2));
        let answer = recv_wait(h, q, count - got.len(), visibility, wait).await;
        let in_time = start.elapsed() < visibility;
        for d in answer {
            match got.iter_mut().find(|g| g.message_id == d.message_id) {
                Some(_) if in_time => panic!(
                    "message {} was handed out twice within its visibility timeout of {visibility:?}",
                    d.message_id
                ),
                Some(earlier) => *earlier = d,
                None => got.push(d),
            }
        }
    }
    got
}

/// Fails a case whose check ended after its window (see [`Harness::window`]): what it saw says
/// nothing about the engine then, only that the server is too slow for the window.
fn within_window(h: &Harness, since: Instant, what: &str) {
    let took = since.elapsed();
    assert!(
        took < h.window(),
        "{what} took {took:?}, past the case's window of {:?}: the server is too slow for this \
         harness; give it more patience (Harness::patience)",
        h.window()
    );
}

/// Asserts `q`'s depth as (visible, in flight, delayed).
async fn assert_depth(h: &Harness, q: &QueueName, expected: (u64, u64, u64), what: &str) {
    let depth = h.engine.queue.depth(q).await.unwrap();
    assert_eq!(
        (depth.visible, depth.in_flight, depth.delayed),
        expected,
        "{what}: {depth:?}"
    );
}

/// Asserts with one long poll that nothing is visible in `q` now.
async fn assert_nothing_visible(h: &Harness, q: &QueueName, what: &str) {
    let got = recv_wait(h, q, 10, h.ticks(30), h.ticks(1)).await;
    assert!(got.is_empty(), "{what}: got {:?}", bodies(&got));
}

fn bodies(ds: &[Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| String::from_utf8_lossy(&d.body).into_owned())
        .collect()
}

fn fifo_msg(body: &str, group: &str) -> OutgoingMessage {
    OutgoingMessage::new(body.to_string())
        .group(group)
        .dedup_id(format!("{group}-{body}"))
}

pub async fn visibility_expiry_redelivers_with_rising_receive_count(h: &Harness) {
    let q = h.queue("vis", QueueOptions::default()).await.unwrap();
    let sent = OutgoingMessage::new("hello").attribute("kind", "greeting");
    let id = h.engine.queue.send(&q, sent).await.unwrap();
    let received = Instant::now();
    let first = recv(h, &q, 10, h.window()).await;
    assert_eq!(first.len(), 1, "one message sent, one received");
    let d1 = &first[0];
    assert_eq!(
        (d1.message_id.as_str(), d1.receive_count, &d1.body[..]),
        (id.as_str(), 1, &b"hello"[..])
    );
    assert_eq!(
        d1.attributes.get("kind").map(String::as_str),
        Some("greeting"),
        "attributes travel"
    );
    let age = std::time::SystemTime::now()
        .duration_since(d1.sent_at)
        .unwrap_or_default();
    assert!(
        age < Duration::from_secs(60),
        "sent_at is the send time, got {age:?} ago"
    );
    assert!(
        recv(h, &q, 10, h.window()).await.is_empty(),
        "an in-flight message is hidden"
    );
    within_window(h, received, "receiving twice");
    let again = recv_within(h, &q, 10, h.ticks(30), h.window() * 4).await;
    assert_eq!(
        again.len(),
        1,
        "an undeleted message comes back after its visibility timeout"
    );
    let d2 = &again[0];
    assert_eq!(d2.message_id, d1.message_id);
    assert_eq!(d2.receive_count, 2, "the receive count rises on redelivery");
    assert_ne!(d2.receipt, d1.receipt, "every delivery has a fresh receipt");
    assert_eq!(
        d2.sent_at, d1.sent_at,
        "sent_at is the first send, not the redelivery"
    );
    h.engine.queue.delete(&q, &d2.receipt).await.unwrap();
    assert_eq!(
        h.engine.queue.depth(&q).await.unwrap(),
        Default::default(),
        "deleted means gone"
    );
}

pub async fn extend_keeps_hidden_and_release_makes_visible(h: &Harness) {
    let q = h.queue("lease", QueueOptions::default()).await.unwrap();
    h.engine
        .queue
        .send(&q, OutgoingMessage::new("job"))
        .await
        .unwrap();
    let received = Instant::now();
    let d = recv(h, &q, 1, h.window()).await.remove(0);
    h.engine
        .queue
        .change_visibility(&q, &d.receipt, h.window() * 4)
        .await
        .unwrap();
    within_window(h, received, "receiving and extending");
    tokio::time::sleep_until(received + h.window() + h.ticks(2)).await;
    assert!(
        recv(h, &q, 1, h.ticks(1)).await.is_empty(),
        "an extended lease outlives the first timeout"
    );
    h.engine
        .queue
        .change_visibility(&q, &d.receipt, Duration::ZERO)
        .await
        .unwrap();
    let back = recv_within(h, &q, 1, h.ticks(30), h.window()).await;
    assert_eq!(back.len(), 1, "a released message is visible again");
    assert_eq!(back[0].receive_count, 2);
}

pub async fn stale_receipt_neither_deletes_nor_extends(h: &Harness) {
    let q = h.queue("stale", QueueOptions::default()).await.unwrap();
    h.engine
        .queue
        .send(&q, OutgoingMessage::new("m"))
        .await
        .unwrap();
    let old = recv(h, &q, 1, h.ticks(1)).await.remove(0);
    let newer = recv_within(h, &q, 1, h.ticks(30), h.window() * 4)
        .await
        .remove(0);
    assert_eq!(newer.receive_count, 2);
    h.engine.queue.delete(&q, &old.receipt).await.unwrap();
    let err = h
        .engine
        .queue
        .change_visibility(&q, &old.receipt, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "a stale receipt cannot change visibility: {err}"
    );
    assert_eq!(
        h.engine.queue.depth(&q).await.unwrap().in_flight,
        1,
        "a stale delete left the newer delivery"
    );
    assert!(
        recv(h, &q, 1, h.ticks(1)).await.is_empty(),
        "a stale release did not release the newer delivery"
    );
    h.engine
        .queue
        .change_visibility(&q, &newer.receipt, h.ticks(30))
        .await
        .unwrap();
    h.engine.queue.delete(&q, &newer.receipt).await.unwrap();
    h.engine.queue.delete(&q, &newer.receipt).await.unwrap();
    assert_eq!(
        h.engine.queue.depth(&q).await.unwrap(),
        Default::default(),
        "delete is idempotent"
    );
}

pub async fn dead_letters_after_max_receives(h: &Harness) {
    let dlq = h.queue("dlq", QueueOptions::default()).await.unwrap();
    let options = QueueOptions {
        dead_letter: Some(DeadLetter {
            queue: dlq.clone(),
            max_receives: 2,
        }),
        ..QueueOptions::default()
    };
    let q = h.queue("work", options.clone()).await.unwrap();
    assert_eq!(h.engine.queue.queue_options(&q).await.unwrap(), options);
    let id = h
        .engine
        .queue
        .send(&q, OutgoingMessage::new("poison"))
        .await
        .unwrap();
    for count in 1..=2 {
        let d = recv_within(h, &q, 1, h.ticks(1), h.window() * 4).await;
        assert_eq!(d.len(), 1, "receive {count} of max_receives 2");
        assert_eq!(d[0].receive_count, count);
    }
    tokio::time::sleep(h.ticks(2)).await;
    assert!(
        recv_wait(h, &q, 1, h.ticks(1), h.ticks(2)).await.is_empty(),
        "no third delivery"
    );
    let dead = recv_within(h, &dlq, 1, h.ticks(30), h.window() * 4).await;
    assert_eq!(
        bodies(&dead),
        ["poison"],
        "the message is in the dead-letter queue"
    );
    assert_eq!(
        dead[0].message_id, id,
        "a dead-lettered message keeps its id"
    );
    assert_eq!(h.engine.queue.depth(&q).await.unwrap(), Default::default());
}

pub async fn fifo_orders_within_a_group_and_holds_a_group_in_flight(h: &Harness) {
    let q = h
        .queue("order.fifo", QueueOptions::default())
        .await
        .unwrap();
    let batch = vec![
        fifo_msg("a1", "A"),
        fifo_msg("b1", "B"),
        fifo_msg("a2", "A"),
        fifo_msg("a3", "A"),
        fifo_msg("b2", "B"),
    ];
    h.engine.queue.send_batch(&q, batch).await.unwrap();
    let received = Instant::now();
    let head = recv(h, &q, 1, h.window()).await;
    assert_eq!(bodies(&head), ["a1"], "the first message sent comes first");
    assert_eq!(head[0].group_id.as_deref(), Some("A"));
    // While a1 is in flight, group A delivers nothing; group B goes on, in order.
    let mut b_seen = Vec::new();
    while b_seen.len() < 2 {
        let got = recv_wait(h, &q, 10, h.ticks(30), h.tick).await;
        within_window(h, received, "receiving group B while a1 is in flight");
        for d in got {
            assert_eq!(
                d.group_id.as_deref(),
                Some("B"),
                "group A is held while a1 is in flight"
            );
            b_seen.push(String::from_utf8_lossy(&d.body).into_owned());
            h.engine.queue.delete(&q, &d.receipt).await.unwrap();
        }
    }
    assert_eq!(b_seen, ["b1", "b2"], "group B is independent and ordered");
    // a1 was not deleted: when it is visible again it comes before a2.
    let again = recv_within(h, &q, 1, h.ticks(30), h.window() * 4).await;
    assert_eq!(bodies(&again), ["a1"], "a redelivered head keeps its place");
    assert_eq!(again[0].receive_count, 2);
    h.engine.queue.delete(&q, &again[0].receipt).await.unwrap();
    let mut rest = Vec::new();
    while rest.len() < 2 {
        let got = recv_within(h, &q, 10, h.ticks(30), h.window() * 4).await;
        assert!(
            !got.is_empty(),
            "a2 and a3 are delivered once a1 is deleted"
        );
        for d in got {
            rest.push(String::from_utf8_lossy(&d.body).into_owned());
            h.engine.queue.delete(&q, &d.receipt).await.unwrap();
        }
    }
    assert_eq!(rest, ["a2", "a3"]);
}

pub async fn fifo_deduplicates_within_the_window(h: &Harness) {
    let q = h
        .queue("dedup.fifo", QueueOptions::default())
        .await
        .unwrap();
    let first = h
        .engine
        .queue
        .send(&q, OutgoingMessage::new("x").group("g").dedup_id("d1"))
        .await
        .unwrap();
    h.engine
        .queue
        .send(&q, OutgoingMessage::new("y").group("g").dedup_id("d1"))
        .await
        .unwrap();
    let got = collect(h, &q, 1, h.ticks(30)).await;
    assert_eq!(bodies(&got), ["x"], "the first message is delivered");
    assert_eq!(got[0].message_id, first);
    assert_depth(h, &q, (0, 1, 0), "a repeated deduplication id is dropped").await;
    h.engine.queue.delete(&q, &got[0].receipt).await.unwrap();
    h.engine
        .queue
        .send(&q, OutgoingMessage::new("z").group("g").dedup_id("d1"))
        .await
        .unwrap();
    assert!(
        recv(h, &q, 10, h.ticks(30)).await.is_empty(),
        "the id is remembered after the delete"
    );

    let content = QueueOptions {
        content_based_dedup: true,
        ..QueueOptions::default()
    };
    let c = h.queue("content.fifo", content).await.unwrap();
    for body in ["same", "same", "other"] {
        h.engine
            .queue
            .send(&c, OutgoingMessage::new(body).group("g"))
            .await
            .unwrap();
    }
    let got = collect(h, &c, 2, h.ticks(30)).await;
    assert_eq!(bodies(&got), ["same", "other"]);
    assert_depth(
        h,
        &c,
        (0, 2, 0),
        "content-based deduplication drops an equal body",
    )
    .await;
}

pub async fn delay_hides_a_message_until_due(h: &Harness) {
    let q = h.queue("delay", QueueOptions::default()).await.unwrap();
    let start = Instant::now();
    h.engine
        .queue
        .send(&q, OutgoingMessage::new("later").delay(h.window()))
        .await
        .unwrap();
    h.engine
        .queue
        .send(&q, OutgoingMessage::new("now"))
        .await
        .unwrap();
    let first = recv(h, &q, 10, h.ticks(30)).await;
    within_window(h, start, "sending twice and receiving");
    assert_eq!(bodies(&first), ["now"], "the delayed message is hidden");
    let later = recv_within(h, &q, 10, h.ticks(30), h.window() * 4).await;
    assert_eq!(bodies(&later), ["later"]);
    assert!(
        start.elapsed() >= h.window() * 9 / 10,
        "delivered after its delay, at {:?}",
        start.elapsed()
    );
}

pub async fn batch_limits_and_bad_input_are_refused(h: &Harness) {
    let q = h
        .queue(
            "limits",
            QueueOptions {
                max_message_bytes: 1024,
                ..QueueOptions::default()
            },
        )
        .await
        .unwrap();
    let queue = &h.engine.queue;
    let invalid = |r: nimbus_core::Result<_>, what: &str| {
        let err = r.err().unwrap_or_else(|| panic!("{what} was accepted"));
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{what}: {err}");
        err.to_string()
    };
    invalid(
        queue.send_batch(&q, Vec::new()).await.map(drop),
        "an empty batch",
    );
    let too_many = vec![OutgoingMessage::new("m"); MAX_BATCH + 1];
    assert!(invalid(
        queue.send_batch(&q, too_many).await.map(drop),
        "an oversized batch"
    )
    .contains("batch"));
    let mixed = vec![
        OutgoingMessage::new("ok"),
        OutgoingMessage::new(vec![b'x'; 1025]),
    ];
    assert!(invalid(
        queue.send_batch(&q, mixed).await.map(drop),
        "a message over max_message_bytes"
    )
    .contains("1024"));
    assert_eq!(
        queue.depth(&q).await.unwrap().visible,
        0,
        "a batch with an invalid message sends nothing"
    );
    invalid(
        queue.receive(&q, ReceiveRequest::new(0)).await.map(drop),
        "a receive of 0",
    );
    invalid(
        queue
            .receive(&q, ReceiveRequest::new(MAX_BATCH + 1))
            .await
            .map(drop),
        "a receive over the batch limit",
    );
    let wait = invalid(
        queue
            .receive(&q, ReceiveRequest::new(1).wait(Duration::from_secs(21)))
            .await
            .map(drop),
        "a 21 s wait",
    );
    assert!(wait.contains("wait"), "{wait}");
    let long = ReceiveRequest::new(1).visibility(Duration::from_secs(12 * 3600 + 1));
    assert!(invalid(
        queue.receive(&q, long).await.map(drop),
        "a visibility over 12 h"
    )
    .contains("visibility"));
    let missing = h.queue_name("missing");
    let err = queue
        .send(&missing, OutgoingMessage::new("m"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains(missing.as_str()),
        "the error names the queue: {err}"
    );

    let full = vec![OutgoingMessage::new("m"); MAX_BATCH];
    let ids = queue.send_batch(&q, full).await.unwrap();
    assert_eq!(ids.len(), MAX_BATCH, "a batch at the limit is accepted");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        MAX_BATCH,
        "every message of a batch has its own id"
    );
    let all = MAX_BATCH as u64;
    assert_depth(h, &q, (all, 0, 0), "a batch at the limit is stored whole").await;
    // Receives and deletes of more than one service call's worth; the rest is purged, since
    // handing out all of it would measure a slow server, not the batch limit.
    let part = 100;
    let got = collect(h, &q, part, h.ticks(60)).await;
    assert_eq!(
        got.len(),
        part,
        "a receive hands out a part of a large queue"
    );
    let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone()).collect();
    queue.delete_batch(&q, &receipts).await.unwrap();
    assert_depth(
        h,
        &q,
        (all - part as u64, 0, 0),
        "what was received and deleted is gone, nothing left in flight",
    )
    .await;
    queue.purge(&q).await.unwrap();
    assert_eq!(queue.depth(&q).await.unwrap(), Default::default());
}

pub async fn depth_counts_visible_in_flight_and_delayed(h: &Harness) {
    let q = h.queue("depth", QueueOptions::default()).await.unwrap();
    let mut batch = vec![OutgoingMessage::new("v"); 3];
    batch.push(OutgoingMessage::new("d").delay(h.ticks(30)));
    h.engine.queue.send_batch(&q, batch).await.unwrap();
    assert_eq!(collect(h, &q, 1, h.ticks(30)).await.len(), 1);
    let depth = h.engine.queue.depth(&q).await.unwrap();
    assert_eq!(
        (depth.visible, depth.in_flight, depth.delayed),
        (2, 1, 1),
        "{depth:?}"
    );
    h.engine.queue.purge(&q).await.unwrap();
    assert_eq!(
        h.engine.queue.depth(&q).await.unwrap(),
        Default::default(),
        "purge empties the queue"
    );
}

pub async fn long_poll_wakes_on_send_and_times_out_when_empty(h: &Harness) {
    let q = h.queue("poll", QueueOptions::default()).await.unwrap();
    let start = Instant::now();
    assert!(recv_wait(h, &q, 1, h.ticks(30), h.ticks(2))
        .await
        .is_empty());
    let waited = start.elapsed();
    assert!(
        waited >= h.ticks(2) * 9 / 10,
        "an empty long poll waits its time, waited {waited:?}"
    );
    assert!(
        waited < h.ticks(2) + h.window(),
        "and not much longer, waited {waited:?}"
    );

    let queue = h.engine.queue.clone();
    let (q2, wait) = (q.clone(), h.ticks(15));
    let poller = tokio::spawn(async move {
        let start = Instant::now();
        let got = queue
            .receive(
                &q2,
                ReceiveRequest::new(1).wait(wait.min(Duration::from_secs(20))),
            )
            .await;
        (got, start.elapsed())
    });
    tokio::time::sleep(h.ticks(1)).await;
    h.engine
        .queue
        .send(&q, OutgoingMessage::new("wake"))
        .await
        .unwrap();
    let (got, took) = poller.await.unwrap();
    assert_eq!(
        bodies(&got.unwrap()),
        ["wake"],
        "a waiting receive gets a message sent meanwhile"
    );
    assert!(
        took < h.ticks(8),
        "the poll returned when the message came, took {took:?}"
    );
}

pub async fn concurrent_consumers_never_share_a_delivery(h: &Harness) {
    let q = h.queue("share", QueueOptions::default()).await.unwrap();
    let total = 200;
    let batch = (0..total)
        .map(|i| OutgoingMessage::new(i.to_string()))
        .collect();
    h.engine.queue.send_batch(&q, batch).await.unwrap();
    let mut consumers = Vec::new();
    for _ in 0..4 {
        // A visibility timeout no slow server outlasts: a message handed out twice is then a
        // shared delivery, not a lapsed one.
        let (queue, q, vis, wait) = (h.engine.queue.clone(), q.clone(), h.ticks(600), h.ticks(2));
        consumers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = queue
                    .receive(&q, ReceiveRequest::new(7).visibility(vis).wait(wait))
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone()).collect();
                queue.delete_batch(&q, &receipts).await.unwrap();
                mine.extend(got.into_iter().map(|d| d.body));
            }
        }));
    }
    let mut seen = HashSet::new();
    for c in consumers {
        for body in c.await.unwrap() {
            assert!(
                seen.insert(body.clone()),
                "message {body:?} was delivered to two consumers"
            );
        }
    }
    assert_eq!(seen.len(), total, "every message was delivered");
}

pub async fn queue_lifecycle_is_idempotent_and_conflicts_are_reported(h: &Harness) {
    let q = h.queue("life", QueueOptions::default()).await.unwrap();
    h.engine
        .queue
        .create_queue(&q, &QueueOptions::default())
        .await
        .unwrap();
    let other = QueueOptions {
        visibility_timeout: Duration::from_secs(99),
        ..QueueOptions::default()
    };
    let err = h.engine.queue.create_queue(&q, &other).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(h.engine.queue.list_queues().await.unwrap().contains(&q));
    let orphan = QueueOptions {
        dead_letter: Some(DeadLetter {
            queue: h.queue_name("nowhere"),
            max_receives: 3,
        }),
        ..QueueOptions::default()
    };
    let err = h
        .engine
        .queue
        .create_queue(&h.queue_name("orphan"), &orphan)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "a missing dead-letter queue is reported: {err}"
    );
    h.engine.queue.delete_queue(&q).await.unwrap();
    assert!(!h.engine.queue.list_queues().await.unwrap().contains(&q));
    let err = h
        .engine
        .queue
        .send(&q, OutgoingMessage::new("m"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

pub async fn fan_out_reaches_every_subscribed_queue_through_filters(h: &Harness) {
    let topic = h.topic("events").await.unwrap();
    h.engine.topic.create_topic(&topic).await.unwrap();
    let all = h.queue("all", QueueOptions::default()).await.unwrap();
    let only_a = h.queue("only-a", QueueOptions::default()).await.unwrap();
    let sub_all = h.engine.topic.subscribe(&topic, &all, None).await.unwrap();
    let sub_a = h
        .engine
        .topic
        .subscribe(&topic, &only_a, Some(Filter::on("job_id", ["b"])))
        .await
        .unwrap();
    let resub = h
        .engine
        .topic
        .subscribe(&topic, &only_a, Some(Filter::on("job_id", ["a"])))
        .await
        .unwrap();
    assert_eq!(
        resub.id, sub_a.id,
        "subscribing again replaces the filter of the same subscription"
    );
    assert_eq!(h.engine.topic.subscriptions(&topic).await.unwrap().len(), 2);
    let attrs = |job: &str| Attributes::from([("job_id".to_string(), job.to_string())]);
    h.engine
        .topic
        .publish(&topic, Bytes::from("for a"), attrs("a"))
        .await
        .unwrap();
    h.engine
        .topic
        .publish(&topic, Bytes::from("for b"), attrs("b"))
        .await
        .unwrap();
    let mut got_all = bodies(&collect(h, &all, 2, h.ticks(30)).await);
    got_all.sort();
    assert_eq!(
        got_all,
        ["for a", "for b"],
        "an unfiltered subscriber gets everything"
    );
    let got_a = collect(h, &only_a, 1, h.ticks(30)).await;
    assert_eq!(
        bodies(&got_a),
        ["for a"],
        "a filtered subscriber gets what passes"
    );
    assert_nothing_visible(h, &only_a, "a filtered subscriber gets only what passes").await;
    assert_eq!(
        got_a[0].attributes,
        attrs("a"),
        "raw delivery keeps the attributes"
    );
    h.engine.topic.unsubscribe(&sub_all.id).await.unwrap();
    h.engine
        .topic
        .publish(&topic, Bytes::from("late"), attrs("z"))
        .await
        .unwrap();
    assert!(
        recv_wait(h, &all, 1, h.ticks(30), h.ticks(1))
            .await
            .is_empty(),
        "unsubscribed queues get nothing"
    );
    let missing = nimbus_core::TopicName::new(format!("{}-nope", h.prefix)).unwrap();
    let err = h
        .engine
        .topic
        .publish(&missing, Bytes::from("x"), Attributes::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

pub async fn put_if_absent_raced_by_8_tasks_has_one_winner(h: &Harness) {
    let key = ItemKey::new(format!("{}-claims", h.prefix), "task-1").unwrap();
    let mut racers = Vec::new();
    for i in 0..8 {
        let (ledger, key) = (h.engine.ledger.clone(), key.clone());
        racers.push(tokio::spawn(async move {
            ledger
                .put_if_absent(&key, Bytes::from(format!("worker-{i}")))
                .await
                .unwrap()
                .then_some(i)
        }));
    }
    let mut winners = Vec::new();
    for r in racers {
        winners.extend(r.await.unwrap());
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one racer creates the item, got {winners:?}"
    );
    let item = h.engine.ledger.get(&key).await.unwrap().unwrap();
    assert_eq!(
        item.value,
        Bytes::from(format!("worker-{}", winners[0])),
        "the winner's value is stored"
    );
}

pub async fn counter_adds_from_8_tasks_sum_right(h: &Harness) {
    let key = ItemKey::new(format!("{}-counters", h.prefix), "done").unwrap();
    let ledger = Arc::clone(&h.engine.ledger);
    let mut adders = Vec::new();
    for i in 1..=8i64 {
        let (ledger, key) = (ledger.clone(), key.clone());
        adders.push(tokio::spawn(async move {
            for _ in 0..5 {
                ledger.add(&key, i).await.unwrap();
            }
        }));
    }
    for a in adders {
        a.await.unwrap();
    }
    assert_eq!(
        ledger.add(&key, 0).await.unwrap(),
        5 * 36,
        "no add was lost"
    );
    assert_eq!(
        ledger.add(&key, -80).await.unwrap(),
        100,
        "adds may be negative"
    );
}

pub async fn ledger_items_have_versions_and_conditions(h: &Harness) {
    let ledger = &h.engine.ledger;
    let part = format!("{}-items", h.prefix);
    let key = ItemKey::new(&part, "b").unwrap();
    assert_eq!(ledger.get(&key).await.unwrap(), None);
    assert_eq!(
        ledger
            .put(&key, Bytes::from("v1"), Condition::Always)
            .await
            .unwrap(),
        Some(1)
    );
    assert!(
        !ledger
            .put_if_absent(&key, Bytes::from("other"))
            .await
            .unwrap(),
        "put-if-absent on an item fails"
    );
    assert_eq!(
        ledger
            .put(&key, Bytes::from("v2"), Condition::Version(1))
            .await
            .unwrap(),
        Some(2)
    );
    assert_eq!(
        ledger
            .put(&key, Bytes::from("v3"), Condition::Version(1))
            .await
            .unwrap(),
        None,
        "a stale version loses"
    );
    assert_eq!(ledger.add(&key, 5).await.unwrap(), 5);
    let item = ledger.get(&key).await.unwrap().unwrap();
    assert_eq!(
        (item.value, item.counter, item.version),
        (Bytes::from("v2"), 5, 3)
    );
    assert_eq!(
        ledger
            .put(&key, Bytes::from("v4"), Condition::Always)
            .await
            .unwrap(),
        Some(4)
    );
    assert_eq!(
        ledger.get(&key).await.unwrap().unwrap().counter,
        5,
        "a put keeps the counter"
    );
    ledger
        .put(
            &ItemKey::new(&part, "a").unwrap(),
            Bytes::from("first"),
            Condition::Always,
        )
        .await
        .unwrap();
    ledger
        .put(
            &ItemKey::new(format!("{part}-x"), "c").unwrap(),
            Bytes::new(),
            Condition::Always,
        )
        .await
        .unwrap();
    let listed: BTreeMap<_, _> = ledger.list(&part).await.unwrap().into_iter().collect();
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        ["a", "b"],
        "list covers one partition, sorted"
    );
    assert!(
        !ledger.delete(&key, Condition::Version(1)).await.unwrap(),
        "a delete at a stale version does nothing"
    );
    assert!(ledger.delete(&key, Condition::Version(4)).await.unwrap());
    assert!(
        !ledger.delete(&key, Condition::Always).await.unwrap(),
        "nothing left to delete"
    );
    assert_eq!(ledger.get(&key).await.unwrap(), None);
}

pub async fn ledger_pages_a_partition_both_ways_from_a_cursor(h: &Harness) {
    use nimbus_core::{Order, Page};
    let ledger = &h.engine.ledger;
    let part = format!("{}-pages", h.prefix);
    let items: Vec<_> = (0..25)
        .map(|i| {
            (
                ItemKey::new(&part, format!("k{i:03}")).unwrap(),
                Bytes::from(format!("v{i}")),
                Condition::Always,
            )
        })
        .collect();
    ledger.put_batch(items).await.unwrap();
    let page = |after: Option<&'static str>, limit, order| Page {
        partition: part.as_str(),
        after,
        limit,
        order,
    };
    let sorts = |items: Vec<(String, nimbus_core::Item)>| -> Vec<String> {
        items.into_iter().map(|(s, _)| s).collect()
    };
    let first = sorts(
        ledger
            .list_page(page(None, 10, Order::Descending))
            .await
            .unwrap(),
    );
    assert_eq!(first.first().map(String::as_str), Some("k024"));
    assert_eq!(first.len(), 10);
    let second = ledger
        .list_page(page(Some("k015"), 10, Order::Descending))
        .await
        .unwrap();
    assert_eq!(second[0].0, "k014", "a page starts after its cursor");
    assert_eq!(second[0].1.value, Bytes::from("v14"));
    let last = sorts(
        ledger
            .list_page(page(Some("k005"), 10, Order::Descending))
            .await
            .unwrap(),
    );
    assert_eq!(
        last,
        ["k004", "k003", "k002", "k001", "k000"],
        "the last page is short"
    );
    let up = sorts(
        ledger
            .list_page(page(Some("k020"), 3, Order::Ascending))
            .await
            .unwrap(),
    );
    assert_eq!(up, ["k021", "k022", "k023"]);
    assert!(ledger
        .list_page(page(Some("k024"), 5, Order::Ascending))
        .await
        .unwrap()
        .is_empty());
    for bad in [0, 1001] {
        let err = ledger
            .list_page(page(None, bad, Order::Ascending))
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            nimbus_core::ErrorKind::InvalidInput,
            "limit {bad}"
        );
        assert!(
            err.to_string().contains("page limit must be 1 to 1000"),
            "{err}"
        );
    }
}

pub async fn blobs_put_get_list_delete(h: &Harness) {
    let blobs = &h.engine.blobs;
    let a = BlobPath::from(format!("{}/inputs/a.bin", h.prefix));
    let b = BlobPath::from(format!("{}/inputs/b.bin", h.prefix));
    let payload = Bytes::from(vec![7u8; 100_000]);
    blobs
        .put(&a, PutPayload::from(payload.clone()))
        .await
        .unwrap();
    blobs.put(&b, PutPayload::from_static(b"b")).await.unwrap();
    assert_eq!(blobs.get(&a).await.unwrap().bytes().await.unwrap(), payload);
    let prefix = BlobPath::from(format!("{}/inputs", h.prefix));
    let mut listed: Vec<_> = blobs
        .list(Some(&prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    assert_eq!(listed, [a.clone(), b.clone()]);
    blobs.delete(&a).await.unwrap();
    assert!(matches!(
        blobs.get(&a).await,
        Err(object_store::Error::NotFound { .. })
    ));
}

pub async fn put_batch_checks_each_condition_on_its_own(h: &Harness) {
    let ledger = &h.engine.ledger;
    let part = format!("{}-batch", h.prefix);
    let key = |s: &str| ItemKey::new(&part, s).unwrap();
    ledger
        .put(&key("taken"), Bytes::from("old"), Condition::Always)
        .await
        .unwrap();
    let results = ledger
        .put_batch(vec![
            (key("new"), Bytes::from("n"), Condition::Absent),
            (key("taken"), Bytes::from("lost"), Condition::Absent),
            (key("taken"), Bytes::from("cas"), Condition::Version(1)),
            (key("missing"), Bytes::from("m"), Condition::Version(1)),
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        [Some(1), None, Some(2), None],
        "each put stands on its own condition"
    );
    assert_eq!(
        ledger.get(&key("taken")).await.unwrap().unwrap().value,
        Bytes::from("cas")
    );
    assert_eq!(ledger.get(&key("missing")).await.unwrap(), None);
}

pub async fn fifo_group_is_held_by_any_message_in_flight(h: &Harness) {
    let q = h.queue("held.fifo", QueueOptions::default()).await.unwrap();
    h.engine
        .queue
        .send_batch(&q, vec![fifo_msg("a1", "A"), fifo_msg("a2", "A")])
        .await
        .unwrap();
    let both = collect(h, &q, 2, h.ticks(30)).await;
    assert_eq!(bodies(&both), ["a1", "a2"]);
    // a1 goes back (a retry) while a2 is still in flight: the group stays held.
    h.engine
        .queue
        .change_visibility(&q, &both[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    assert!(
        recv(h, &q, 10, h.ticks(30)).await.is_empty(),
        "a group with a message in flight delivers nothing"
    );
    h.engine.queue.delete(&q, &both[1].receipt).await.unwrap();
    let again = recv_within(h, &q, 10, h.ticks(30), h.window() * 4).await;
    assert_eq!(bodies(&again), ["a1"], "released once the group is free");
}

pub async fn a_zero_visibility_receive_hands_out_each_message_once(h: &Harness) {
    let q = h.queue("zero", QueueOptions::default()).await.unwrap();
    h.engine
        .queue
        .send_batch(
            &q,
            vec![OutgoingMessage::new("one"), OutgoingMessage::new("two")],
        )
        .await
        .unwrap();
    let got = h
        .engine
        .queue
        .receive(&q, ReceiveRequest::new(10).visibility(Duration::ZERO))
        .await
        .unwrap();
    let mut ids: Vec<_> = got.iter().map(|d| d.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        got.len(),
        "no message twice in one batch: {:?}",
        bodies(&got)
    );
}

/// Every rule of `nimbus_core::validate`, refused as invalid input with a message naming what
/// is wrong, on every engine; a batch with one bad item writes none of it (the AWS ledger once
/// wrote the items before a refused one).
pub async fn every_core_rule_is_refused_alike_and_a_refused_batch_writes_nothing(h: &Harness) {
    async fn refused<T>(
        what: &str,
        names: &str,
        call: impl std::future::Future<Output = nimbus_core::Result<T>>,
    ) {
        match call.await {
            Ok(_) => panic!("{what} was accepted"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidInput, "{what}: {e}");
                assert!(
                    e.to_string().contains(names),
                    "{what}: `{e}` does not name `{names}`"
                );
            }
        }
    }
    let (queue, topic, ledger) = (&h.engine.queue, &h.engine.topic, &h.engine.ledger);
    let name = h.queue_name("rules");
    let with = |f: fn(&mut QueueOptions)| {
        let mut o = QueueOptions::default();
        f(&mut o);
        o
    };
    let cases: [(&str, &str, QueueOptions); 7] = [
        (
            "a 13 h visibility timeout",
            "visibility",
            with(|o| o.visibility_timeout = Duration::from_secs(13 * 3600)),
        ),
        (
            "a visibility timeout of 1.5 s",
            "visibility_timeout",
            with(|o| o.visibility_timeout = Duration::from_millis(1500)),
        ),
        (
            "a retention of 30 s",
            "retention",
            with(|o| o.retention = Duration::from_secs(30)),
        ),
        (
            "a message size limit of 0",
            "max_message_bytes",
            with(|o| o.max_message_bytes = 0),
        ),
        (
            "content-based deduplication on a standard queue",
            "content_based_dedup",
            with(|o| o.content_based_dedup = true),
        ),
        (
            "a dead-letter queue after 0 receives",
            "max_receives",
            QueueOptions {
                dead_letter: Some(DeadLetter {
                    queue: QueueName::new("elsewhere").unwrap(),
                    max_receives: 0,
                }),
                ..QueueOptions::default()
            },
        ),
        (
            "a FIFO dead-letter queue for a standard queue",
            "same type",
            QueueOptions {
                dead_letter: Some(DeadLetter {
                    queue: QueueName::new("elsewhere.fifo").unwrap(),
                    max_receives: 3,
                }),
                ..QueueOptions::default()
            },
        ),
    ];
    for (what, names, options) in cases {
        refused(what, names, queue.create_queue(&name, &options)).await;
    }
    let own = QueueOptions {
        dead_letter: Some(DeadLetter {
            queue: name.clone(),
            max_receives: 3,
        }),
        ..QueueOptions::default()
    };
    refused(
        "a queue that is its own dead-letter queue",
        "own dead-letter",
        queue.create_queue(&name, &own),
    )
    .await;
    assert!(
        !queue.list_queues().await.unwrap().contains(&name),
        "no refused create made the queue"
    );

    let q = h.queue("rules-ok", QueueOptions::default()).await.unwrap();
    let fq = h
        .queue("rules-ok.fifo", QueueOptions::default())
        .await
        .unwrap();
    let many: Attributes = (0..11)
        .map(|i| (format!("a{i}"), "v".to_string()))
        .collect();
    let bad_messages = [
        (
            "11 attributes",
            "attributes",
            &q,
            OutgoingMessage {
                attributes: many,
                ..OutgoingMessage::new("m")
            },
        ),
        (
            "an empty attribute name",
            "attribute name",
            &q,
            OutgoingMessage::new("m").attribute("", "v"),
        ),
        (
            "a 16 min delay",
            "delay",
            &q,
            OutgoingMessage::new("m").delay(Duration::from_secs(16 * 60)),
        ),
        (
            "a group id on a standard queue",
            "FIFO",
            &q,
            OutgoingMessage::new("m").group("g"),
        ),
        (
            "a FIFO message without a group",
            "group_id",
            &fq,
            OutgoingMessage::new("m").dedup_id("d"),
        ),
        (
            "a FIFO group id with a space",
            "group_id",
            &fq,
            OutgoingMessage::new("m").group("a b").dedup_id("d"),
        ),
        (
            "a delay on a FIFO message",
            "delay",
            &fq,
            OutgoingMessage::new("m")
                .group("g")
                .dedup_id("d")
                .delay(Duration::from_secs(1)),
        ),
    ];
    for (what, names, target, message) in bad_messages {
        // A valid message first: the batch must be refused whole.
        let fine = if target.is_fifo() {
            OutgoingMessage::new("fine").group("g").dedup_id("fine")
        } else {
            OutgoingMessage::new("fine")
        };
        refused(what, names, queue.send_batch(target, vec![fine, message])).await;
    }
    for target in [&q, &fq] {
        assert_eq!(
            queue.depth(target).await.unwrap(),
            Default::default(),
            "a batch with a refused message sends none of it"
        );
    }
    refused(
        "a delete of no receipts",
        "batch",
        queue.delete_batch(&q, &[]),
    )
    .await;
    let sent = queue.send(&q, OutgoingMessage::new("m")).await.unwrap();
    let got = recv(h, &q, 1, h.ticks(30)).await;
    assert_eq!(got.len(), 1, "message {sent} is received");
    refused(
        "a visibility change to 13 h",
        "visibility",
        queue.change_visibility(&q, &got[0].receipt, Duration::from_secs(13 * 3600)),
    )
    .await;

    let t = h.topic("rules").await.unwrap();
    refused(
        "a FIFO queue subscribed to a topic",
        "FIFO",
        topic.subscribe(&t, &fq, None),
    )
    .await;
    refused(
        "a filter of no keys",
        "filter",
        topic.subscribe(&t, &q, Some(Filter::default())),
    )
    .await;
    let six: BTreeMap<String, Vec<String>> = (0..6)
        .map(|i| (format!("k{i}"), vec!["v".to_string()]))
        .collect();
    refused(
        "a filter of 6 keys",
        "keys",
        topic.subscribe(&t, &q, Some(Filter(six))),
    )
    .await;
    refused(
        "a 257 KiB publish",
        "topic limit",
        topic.publish(&t, Bytes::from(vec![b'x'; 257 * 1024]), Attributes::new()),
    )
    .await;

    let part = format!("{}-rules", h.prefix);
    let key = |s: &str| ItemKey::new(&part, s).unwrap();
    let huge = Bytes::from(vec![b'x'; nimbus_core::ledger::MAX_ITEM_BYTES + 1]);
    refused(
        "a 400 KiB + 1 value",
        "item value",
        ledger.put(&key("huge"), huge.clone(), Condition::Always),
    )
    .await;
    let raw_key = ItemKey {
        partition: part.clone(),
        sort: "s".repeat(nimbus_core::ledger::MAX_KEY_BYTES + 1),
    };
    refused("a sort key of 1025 bytes", "sort key", ledger.get(&raw_key)).await;
    refused(
        "a counter on an empty partition",
        "partition",
        ledger.add(
            &ItemKey {
                partition: String::new(),
                sort: "s".into(),
            },
            1,
        ),
    )
    .await;
    refused(
        "a listing of an empty partition",
        "partition",
        ledger.list(""),
    )
    .await;
    let page = nimbus_core::Page {
        partition: &part,
        after: None,
        limit: 0,
        order: nimbus_core::Order::Ascending,
    };
    refused("a page of 0 items", "limit", ledger.list_page(page)).await;
    refused(
        "a batch whose last item is too large",
        "item 1 of the batch",
        ledger.put_batch(vec![
            (key("first"), Bytes::from("fine"), Condition::Always),
            (key("second"), huge, Condition::Always),
        ]),
    )
    .await;
    assert_eq!(
        ledger.get(&key("first")).await.unwrap(),
        None,
        "a refused batch wrote none of its items"
    );
}
