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

/// EC2 instances of one deployment.
#[derive(Debug, Clone)]
pub struct Ec2Provider {
    ec2: aws_sdk_ec2::Client,
    deployment: String,
}

impl Ec2Provider {
    /// The instances tagged with `deployment`, in the engine's region and account.
    pub fn new(engine: &AwsEngine, deployment: impl Into<String>) -> Self {
        Self {
            ec2: aws_sdk_ec2::Client::new(&engine.clients().sdk),
            deployment: deployment.into(),
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
        let profile = spec.profile.as_ref().map(|p| {
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
            .image_id(&spec.image)
            .instance_type(InstanceType::from(spec.instance_type.as_str()))
            .min_count(count)
            .max_count(count)
            .user_data(aws_smithy_types::base64::encode(spec.user_data.as_bytes()))
            .set_iam_instance_profile(profile)
            .tag_specifications(tags)
            .send()
            .await
            .map_err(|e| sdk_error(format!("launch {count} instances of `{}`", spec.image), e))?;
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
