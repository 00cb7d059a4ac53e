//! The EC2 compute provider against moto: the shared compute suite (launch, list by state,
//! stop, start, terminate, bad requests), deployments kept apart by their tag, and the launch
//! intent carried in the instances' user data.
#![cfg(feature = "ec2")]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nimbus_aws::ec2::{Ec2Provider, Machine, USER_DATA};
use nimbus_aws::moto::MotoServer;
use nimbus_aws::AwsEngine;
use nimbus_conformance::compute::ComputeHarness;
use nimbus_conformance::compute_suite;
use nimbus_core::{ComputeProvider, InstanceState, LaunchSpec};

/// An AMI id moto knows (it ships a list of public Amazon Linux images).
const MOTO_AMI: &str = "ami-03cf127a";

fn moto() -> &'static MotoServer {
    static SERVER: OnceLock<MotoServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let moto = MotoServer::start().expect("moto_server starts (pip install 'moto[server]')");
        create_instance_profile(&moto, "nimbus-worker");
        moto
    })
}

/// moto checks that the instance profile exists; nimbus does not manage IAM, so boto3 (which
/// comes with moto) makes it, as `aws iam create-instance-profile` would.
fn create_instance_profile(moto: &MotoServer, name: &str) {
    let script = format!(
        "import boto3; boto3.client('iam', endpoint_url='{}', region_name='us-east-1', \
         aws_access_key_id='testing', aws_secret_access_key='testing')\
         .create_instance_profile(InstanceProfileName='{name}')",
        moto.endpoint()
    );
    let status = std::process::Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "boto3 could not create the instance profile"
    );
}

fn machine() -> Machine {
    Machine {
        image: MOTO_AMI.to_string(),
        instance_type: "t3.micro".to_string(),
        profile: Some("nimbus-worker".to_string()),
        user_data: USER_DATA.to_string(),
    }
}

fn spec() -> LaunchSpec {
    LaunchSpec {
        engine: "aws://?region=us-east-1&prefix=demo-".to_string(),
        blobs: Some("s3://demo-bucket".to_string()),
        queues: vec!["classify-requests".to_string()],
        concurrency: 2,
        exit_when_idle: None,
        extra_args: Vec::new(),
    }
}

/// A deployment of its own for every case.
async fn provider(deployment: &str) -> Ec2Provider {
    let engine = AwsEngine::connect(moto().config("ec2-")).await.unwrap();
    Ec2Provider::new(&engine, deployment, machine())
}

fn unique(stem: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{stem}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn harness() -> ComputeHarness {
    ComputeHarness {
        provider: Arc::new(provider(&unique("suite")).await),
        spec: spec(),
        settle: Duration::from_secs(60),
        guard: None,
    }
}

compute_suite!(harness());

#[tokio::test]
async fn deployments_are_kept_apart_by_their_tag() {
    let ours = provider(&unique("alpha")).await;
    let theirs = provider(&unique("beta")).await;
    let launched = ours.launch(&spec(), 2).await.unwrap();
    theirs.launch(&spec(), 1).await.unwrap();
    let mut ids: Vec<_> = ours
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    let mut expected = launched.clone();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected, "only the deployment's instances are listed");
    ours.terminate(&launched).await.unwrap();
    assert!(ours.list().await.unwrap().is_empty());
    let left = theirs.list().await.unwrap();
    assert_eq!(left.len(), 1, "another deployment is untouched");
    assert!(matches!(
        left[0].state,
        InstanceState::Running | InstanceState::Pending
    ));
}

#[tokio::test]
async fn the_launch_intent_travels_in_the_user_data() {
    // What the instance boots with, as cloud-init reads it: the worker's engine and queues.
    let data = machine().user_data_for(&spec()).unwrap();
    assert!(
        data.contains("NIMBUS_ENGINE=aws://?region=us-east-1&prefix=demo-"),
        "{data}"
    );
    assert!(
        data.contains("NIMBUS_WORKER_ARGS=--queue classify-requests --concurrency 2"),
        "{data}"
    );
    let ours = provider(&unique("intent")).await;
    let launched = ours.launch(&spec(), 1).await.unwrap();
    assert_eq!(launched.len(), 1);
    ours.terminate(&launched).await.unwrap();
}
