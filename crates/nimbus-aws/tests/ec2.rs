//! The EC2 compute provider against moto: launch, list by tag and state, stop, start, terminate.
#![cfg(feature = "ec2")]
#![allow(clippy::unwrap_used)]

use nimbus_aws::ec2::Ec2Provider;
use nimbus_aws::moto::MotoServer;
use nimbus_aws::AwsEngine;
use nimbus_core::{ComputeProvider, InstanceState, LaunchSpec};

/// An AMI id moto knows (it ships a list of public Amazon Linux images).
const MOTO_AMI: &str = "ami-03cf127a";

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

#[tokio::test]
async fn instances_live_through_their_states_and_stay_in_their_deployment() {
    let moto = MotoServer::start().unwrap();
    create_instance_profile(&moto, "nimbus-worker");
    let engine = AwsEngine::connect(moto.config("ec2-")).await.unwrap();
    let ours = Ec2Provider::new(&engine, "alpha");
    let theirs = Ec2Provider::new(&engine, "beta");
    let spec = LaunchSpec {
        image: MOTO_AMI.to_string(),
        instance_type: "t3.micro".to_string(),
        profile: Some("nimbus-worker".to_string()),
        user_data: "#cloud-config\nruncmd: [systemctl start nimbus-worker]\n".to_string(),
    };
    let launched = ours.launch(&spec, 2).await.unwrap();
    assert_eq!(launched.len(), 2);
    theirs.launch(&spec, 1).await.unwrap();

    let listed = ours.list().await.unwrap();
    let mut ids: Vec<_> = listed.iter().map(|i| i.id.clone()).collect();
    let mut expected = launched.clone();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected, "only the deployment's instances are listed");
    assert!(listed
        .iter()
        .all(|i| i.state == InstanceState::Running || i.state == InstanceState::Pending));
    assert!(listed.iter().all(|i| i.launched_at.is_some()));

    ours.stop(&launched[..1]).await.unwrap();
    let state_of = |list: &[nimbus_core::Instance], id: &str| {
        list.iter().find(|i| i.id == id).map(|i| i.state)
    };
    let listed = ours.list().await.unwrap();
    assert!(matches!(
        state_of(&listed, &launched[0]),
        Some(InstanceState::Stopped | InstanceState::Stopping)
    ));
    ours.start(&launched[..1]).await.unwrap();
    let listed = ours.list().await.unwrap();
    assert!(matches!(
        state_of(&listed, &launched[0]),
        Some(InstanceState::Running | InstanceState::Pending)
    ));

    ours.terminate(&launched).await.unwrap();
    assert!(
        ours.list().await.unwrap().is_empty(),
        "terminated instances are not listed"
    );
    assert_eq!(
        theirs.list().await.unwrap().len(),
        1,
        "another deployment is untouched"
    );

    let bad = ours.launch(&spec, 0).await.unwrap_err();
    assert!(bad.to_string().contains("0 instances"), "{bad}");
}
