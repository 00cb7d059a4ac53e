//! The AWS engine against the shared conformance suite, on one moto server started for this
//! test binary. The engine's known gaps against the suite are listed here, in one place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;
use std::time::Duration;

use nimbus_aws::moto::MotoServer;
use nimbus_aws::{provision, AwsEngine, S3Location};
use nimbus_conformance::{conformance_suite, Harness};

fn moto() -> &'static MotoServer {
    static SERVER: OnceLock<MotoServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        MotoServer::start().expect("moto_server starts (pip install 'moto[server]')")
    })
}

async fn harness() -> Harness {
    let aws = AwsEngine::connect(moto().config("conf-"))
        .await
        .expect("connect");
    let blobs = S3Location::parse("s3://conformance").unwrap();
    provision::create_table(aws.clients()).await.expect("table");
    provision::create_bucket(aws.clients(), &blobs)
        .await
        .expect("bucket");
    // SQS counts visibility timeouts, delays and waits in whole seconds.
    Harness::new(aws.engine(&blobs).expect("engine"), Duration::from_secs(1))
        // moto serves a batch call in ~40 ms, and slower when the machine is busy.
        .patience(2)
        .known_gap(
            "stale_receipt_neither_deletes_nor_extends",
            "SQS accepts an older receipt handle of a message: AWS documents that a delete with \
             it succeeds and the message \"might not be deleted\", and moto deletes it and \
             changes its visibility. nimbus does not rely on it: a worker's ledger claim, not the \
             receipt, decides who runs a task.",
        )
        .known_race(
            "counter_adds_from_8_tasks_sum_right",
            "no add was lost",
            "moto applies DynamoDB's ADD as a read and a write without a lock, so concurrent adds \
             can lose one when the machine is busy; DynamoDB applies each update atomically.",
        )
        .known_race(
            "put_if_absent_raced_by_8_tasks_has_one_winner",
            "exactly one racer creates the item",
            "moto checks a condition and writes the item without a lock, so two racing \
             conditional puts can both win; DynamoDB evaluates the condition atomically.",
        )
        .known_race(
            "concurrent_consumers_never_share_a_delivery",
            "delivered to two consumers",
            "moto's ReceiveMessage is not atomic across threads: two concurrent receives can get \
             the same message; SQS hides a message from every other receive once handed out.",
        )
        .known_gap(
            "fifo_deduplicates_within_the_window",
            "moto forgets a FIFO deduplication id once its message is deleted; SQS remembers it \
             for the whole 5-minute window whatever happens to the message.",
        )
}

conformance_suite!(harness());
