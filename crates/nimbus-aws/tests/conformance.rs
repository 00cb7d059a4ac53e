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
        .known_gap(
            "stale_receipt_neither_deletes_nor_extends",
            "SQS accepts an older receipt handle of a message: AWS documents that a delete with \
             it succeeds and the message \"might not be deleted\", and moto deletes it and \
             changes its visibility. nimbus does not rely on it: a worker's ledger claim, not the \
             receipt, decides who runs a task.",
        )
        .known_gap(
            "fifo_deduplicates_within_the_window",
            "moto forgets a FIFO deduplication id once its message is deleted; SQS remembers it \
             for the whole 5-minute window whatever happens to the message.",
        )
}

conformance_suite!(harness());
