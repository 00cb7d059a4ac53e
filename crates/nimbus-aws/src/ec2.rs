//! The EC2 compute provider: the deployment's instances are those tagged
//! `nimbus:deployment=<name>`; launched from an AMI with an instance profile and user data that
//! starts `nimbus worker` (see deploy/aws/).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, InstanceStateName, InstanceType, ResourceType, Tag,
    TagSpecification,
};
use nimbus_core::{ComputeProvider, Error, Instance, InstanceState, LaunchSpec, Result};

use crate::error::sdk_error;
use crate::AwsEngine;

pub use crate::DEPLOYMENT_TAG;

/// The cloud-init file that boots a worker image (deploy/aws/user-data.yaml); the worker's
/// settings in it are replaced by each launch's.
pub const USER_DATA: &str = include_str!("../../../deploy/aws/user-data.yaml");

/// A systemd drop-in, as a cloud-init `write_files` entry: the machine powers off when its
/// worker exits cleanly (it stopped itself when idle); a failed worker is restarted as before.
const POWER_OFF_WHEN_IDLE: &str =
    "  - path: /etc/systemd/system/nimbus-worker.service.d/power-off-when-idle.conf
    permissions: \"0644\"
    content: |
      [Unit]
      SuccessAction=poweroff
";

/// The machine a worker runs on: an image with `nimbus` installed, a size, a role, and the
/// cloud-init file that starts the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The AMI id.
    pub image: String,
    /// The instance type.
    pub instance_type: String,
    /// An IAM instance profile name or ARN.
    pub profile: Option<String>,
    /// The cloud-init user data; its `NIMBUS_ENGINE=`, `NIMBUS_BLOBS=` and
    /// `NIMBUS_WORKER_ARGS=` lines are replaced with the launch's (see [`USER_DATA`]).
    pub user_data: String,
}

impl Machine {
    /// The user data that boots a worker running `spec`.
    ///
    /// The settings reach the worker through systemd's `EnvironmentFile`, whose
    /// `$NIMBUS_WORKER_ARGS` is split at whitespace with no quoting: a worker argument with
    /// whitespace, or any setting with a control character (it would end the cloud-init line),
    /// is refused, naming it.
    pub fn user_data_for(&self, spec: &LaunchSpec) -> Result<String> {
        let args = spec.worker_args();
        if let Some(bad) = args.iter().find(|a| a.chars().any(char::is_whitespace)) {
            return Err(Error::invalid(format!(
                "worker argument `{bad}` holds whitespace, which the EC2 worker's systemd unit cannot pass; write it without spaces (e.g. `\\s` in a regex)"
            )));
        }
        let values = [Some(&spec.engine), spec.blobs.as_ref()];
        if let Some(bad) = values
            .into_iter()
            .flatten()
            .find(|v| v.chars().any(char::is_control))
        {
            return Err(Error::invalid(format!(
                "setting {bad:?} holds a control character"
            )));
        }
        let settings = [
            ("NIMBUS_ENGINE=", Some(spec.engine.clone())),
            ("NIMBUS_BLOBS=", spec.blobs.clone()),
            ("NIMBUS_WORKER_ARGS=", Some(args[1..].join(" "))),
        ];
        let mut out = String::with_capacity(self.user_data.len());
        for line in self.user_data.lines() {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            match settings.iter().find(|(key, _)| trimmed.starts_with(key)) {
                Some((key, Some(value))) => out.push_str(&format!("{indent}{key}{value}")),
                Some((_, None)) => continue,
                None => out.push_str(line),
            }
            out.push('\n');
            if line == "write_files:" && spec.exit_when_idle.is_some() {
                // A worker that stops itself when idle (seed 001's) powers its machine off, so
                // the instance shows as stopped and the policy can start it again.
                out.push_str(POWER_OFF_WHEN_IDLE);
            }
        }
        Ok(out)
    }
}

/// EC2 instances of one deployment.
#[derive(Debug, Clone)]
pub struct Ec2Provider {
    ec2: aws_sdk_ec2::Client,
    deployment: String,
    machine: Machine,
}

impl Ec2Provider {
    /// The instances tagged with `deployment`, in the engine's region and account, launched on
    /// `machine`.
    pub fn new(engine: &AwsEngine, deployment: impl Into<String>, machine: Machine) -> Self {
        Self {
            ec2: aws_sdk_ec2::Client::new(&engine.clients().sdk),
            deployment: deployment.into(),
            machine,
        }
    }
}

fn state(name: Option<&InstanceStateName>) -> Option<InstanceState> {
    Some(match name? {
        InstanceStateName::Pending => InstanceState::Pending,
        InstanceStateName::Running => InstanceState::Running,
        InstanceStateName::Stopping => InstanceState::Stopping,
        InstanceStateName::Stopped => InstanceState::Stopped,
        InstanceStateName::ShuttingDown => InstanceState::ShuttingDown,
        InstanceStateName::Terminated => InstanceState::Terminated,
        _ => return None,
    })
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn ids_or_nothing(ids: &[String]) -> Option<Vec<String>> {
    (!ids.is_empty()).then(|| ids.to_vec())
}

#[async_trait]
impl ComputeProvider for Ec2Provider {
    async fn list(&self) -> Result<Vec<Instance>> {
        let reservations: Vec<_> = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{DEPLOYMENT_TAG}"))
                    .values(&self.deployment)
                    .build(),
            )
            .into_paginator()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_error(format!("list instances of `{}`", self.deployment), e))?
            .into_iter()
            .flat_map(|page| page.reservations.unwrap_or_default())
            .collect();
        let mut instances: Vec<Instance> = reservations
            .into_iter()
            .flat_map(|r| r.instances.unwrap_or_default())
            .filter_map(|i| {
                let state = state(i.state.as_ref().and_then(|s| s.name.as_ref()))?;
                Some(Instance {
                    id: i.instance_id?,
                    state,
                    launched_at: i.launch_time.and_then(|t| {
                        u64::try_from(t.secs())
                            .ok()
                            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
                    }),
                })
            })
            .filter(|i| i.state != InstanceState::Terminated)
            .collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(instances)
    }

    async fn launch(&self, spec: &LaunchSpec, count: u32) -> Result<Vec<String>> {
        let count = i32::try_from(count)
            .ok()
            .filter(|&c| c >= 1)
            .ok_or_else(|| Error::invalid(format!("cannot launch {count} instances; 1 or more")))?;
        let machine = &self.machine;
        let profile = machine.profile.as_ref().map(|p| {
            let builder = IamInstanceProfileSpecification::builder();
            if p.starts_with("arn:") {
                builder.arn(p).build()
            } else {
                builder.name(p).build()
            }
        });
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(tag(DEPLOYMENT_TAG, &self.deployment))
            .tags(tag("Name", &format!("{}-worker", self.deployment)))
            .build();
        let out = self
            .ec2
            .run_instances()
            .image_id(&machine.image)
            .instance_type(InstanceType::from(machine.instance_type.as_str()))
            .min_count(count)
            .max_count(count)
            .user_data(aws_smithy_types::base64::encode(
                machine.user_data_for(spec)?.as_bytes(),
            ))
            .set_iam_instance_profile(profile)
            .tag_specifications(tags)
            .send()
            .await
            .map_err(|e| {
                sdk_error(
                    format!("launch {count} instances of `{}`", machine.image),
                    e,
                )
            })?;
        Ok(out
            .instances
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.instance_id)
            .collect())
    }

    async fn start(&self, ids: &[String]) -> Result<()> {
        let Some(ids) = ids_or_nothing(ids) else {
            return Ok(());
        };
        self.ec2
            .start_instances()
            .set_instance_ids(Some(ids.clone()))
            .send()
            .await
            .map_err(|e| sdk_error(format!("start instances {ids:?}"), e))?;
        Ok(())
    }

    async fn stop(&self, ids: &[String]) -> Result<()> {
        let Some(ids) = ids_or_nothing(ids) else {
            return Ok(());
        };
        self.ec2
            .stop_instances()
            .set_instance_ids(Some(ids.clone()))
            .send()
            .await
            .map_err(|e| sdk_error(format!("stop instances {ids:?}"), e))?;
        Ok(())
    }

    async fn terminate(&self, ids: &[String]) -> Result<()> {
        let Some(ids) = ids_or_nothing(ids) else {
            return Ok(());
        };
        self.ec2
            .terminate_instances()
            .set_instance_ids(Some(ids.clone()))
            .send()
            .await
            .map_err(|e| sdk_error(format!("terminate instances {ids:?}"), e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_carries_the_launch_intent() {
        let machine = Machine {
            image: "ami-1".into(),
            instance_type: "t3.micro".into(),
            profile: None,
            user_data: USER_DATA.to_string(),
        };
        let spec = LaunchSpec {
            engine: "aws://?region=eu-west-1&prefix=demo-".into(),
            blobs: Some("s3://bucket/demo".into()),
            queues: vec!["classify-requests".into()],
            concurrency: 3,
            exit_when_idle: None,
            extra_args: vec![],
        };
        let data = machine.user_data_for(&spec).unwrap();
        assert!(data.starts_with("#cloud-config\n"), "{data}");
        assert!(
            data.contains("      NIMBUS_ENGINE=aws://?region=eu-west-1&prefix=demo-\n"),
            "{data}"
        );
        assert!(
            data.contains("      NIMBUS_BLOBS=s3://bucket/demo\n"),
            "{data}"
        );
        assert!(
            data.contains("      NIMBUS_WORKER_ARGS=--queue classify-requests --concurrency 3\n"),
            "{data}"
        );
        assert!(
            data.contains("nimbus-worker.service"),
            "the rest is kept: {data}"
        );
        assert!(
            !data.contains("SuccessAction"),
            "a worker that does not stop itself keeps its machine"
        );
        let idle = LaunchSpec {
            exit_when_idle: Some(std::time::Duration::from_secs(10)),
            ..spec
        };
        let data = machine.user_data_for(&idle).unwrap();
        assert!(data.contains("--exit-when-idle 10000ms"), "{data}");
        assert!(
            data.contains("write_files:\n  - path: /etc/systemd/system/nimbus-worker.service.d/power-off-when-idle.conf\n"),
            "{data}"
        );
        assert!(data.contains("      SuccessAction=poweroff\n"), "{data}");
        let spaced = LaunchSpec {
            extra_args: vec!["--allow-exec=sleep .*".into()],
            ..LaunchSpec::default()
        };
        let err = machine.user_data_for(&spaced).unwrap_err().to_string();
        assert!(
            err.contains("worker argument `--allow-exec=sleep .*` holds whitespace"),
            "{err}"
        );
        let injected = LaunchSpec {
            engine: "aws://?prefix=x\nruncmd: [reboot]".into(),
            ..LaunchSpec::default()
        };
        let err = machine.user_data_for(&injected).unwrap_err().to_string();
        assert!(err.contains("control character"), "{err}");
    }
}
