//! The chaos harness's second profile in the test command: `nimbus bench chaos` on the AWS
//! engine against a moto server (shorter and slower than the embedded one: moto is slow). A
//! binary of its own, so that it never runs beside the embedded profile on the same cores.
#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used)]

use common::chaos::{assert_held, chaos};

mod common;

#[test]
fn chaos_on_the_aws_engine_against_moto_loses_and_doubles_nothing() {
    let moto =
        nimbus_aws::moto::MotoServer::start().expect("moto_server (./scripts/test.sh installs it)");
    let nimbus = || common::nimbus_on_moto(&moto.endpoint(), "chaos-", "s3://chaos-blobs/run");
    let up = nimbus()
        .args(["aws", "up", "--max-receives", "10"])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // moto is slow: fewer workers, less work, faults less often, no classify requests, a longer
    // lease (a renewal through a loaded moto can take longer than a second) and a wider window
    // (a worker there takes up to about two seconds from a task's effect to its recorded end);
    // one poison task, as in chaos.rs.
    let report = chaos(
        &mut nimbus(),
        &[
            "--seconds",
            "40",
            "--workers",
            "2",
            "--session-every",
            "1s",
            "--session-tasks",
            "12",
            "--atoms-every",
            "8s",
            "--no-classify",
            "--fault-every",
            "4s",
            "--visibility",
            "5s",
            "--window",
            "3s",
        ],
    );
    assert_held(&report, 50, 4);
    assert_eq!(
        report["faults"].as_object().unwrap().len(),
        4,
        "every kind but a full disk: {report}"
    );
}
