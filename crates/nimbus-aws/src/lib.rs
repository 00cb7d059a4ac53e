//! nimbus's AWS engine: queues on SQS, topics on SNS (raw delivery to SQS), the ledger on
//! DynamoDB and blobs on S3 through `object_store`, for a deployment whose resources share a name
//! prefix. Works against anything that speaks these APIs (moto, ElasticMQ, MinIO) through an
//! endpoint override.

pub mod blobs;
pub mod body;
#[cfg(feature = "ec2")]
pub mod ec2;
mod error;
pub mod ledger;
pub mod moto;
pub mod provision;
pub mod queue;
pub mod topic;

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use nimbus_core::{Engine, Error, ObjectStore, Result};

pub use blobs::S3Location;
pub use error::sdk_error;

/// The longest deployment prefix: it leaves SQS 40 of its 80 characters for queue names.
pub const MAX_PREFIX: usize = 40;
/// The tag that marks a queue (and an EC2 instance) as one deployment's; its value is the prefix.
pub const DEPLOYMENT_TAG: &str = "nimbus:deployment";

/// Where the engine's services are and which resources are this deployment's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    /// The region; `None` takes it from the standard AWS chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// An endpoint for every service (an emulator such as moto); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// Prefixed to every queue, topic and table name, so deployments can share an account.
    pub prefix: String,
    /// A fixed access key id and secret (for emulators); `None` uses the standard AWS chain
    /// (environment, profile, container or instance role).
    pub credentials: Option<(String, String)>,
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            region: None,
            endpoint: None,
            prefix: "nimbus-".to_string(),
            credentials: None,
        }
    }
}

impl AwsConfig {
    /// Checks the prefix: up to [`MAX_PREFIX`] of `[A-Za-z0-9_-]` (legal in every service's names).
    pub fn validate(&self) -> Result<()> {
        if self.prefix.is_empty() {
            return Err(Error::invalid(
                "the deployment prefix is empty; every name in the account would be the deployment's",
            ));
        }
        if self.prefix.len() > MAX_PREFIX {
            return Err(Error::invalid(format!(
                "prefix `{}` is {} characters; the limit is {MAX_PREFIX}",
                self.prefix,
                self.prefix.len()
            )));
        }
        if let Some(bad) = self
            .prefix
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(Error::invalid(format!(
                "prefix `{}` contains `{bad}`; use letters, digits, `-` and `_`",
                self.prefix
            )));
        }
        Ok(())
    }
}

/// The SDK clients of one deployment, shared by its services.
#[derive(Debug)]
pub struct Clients {
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// SNS.
    pub sns: aws_sdk_sns::Client,
    /// DynamoDB.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// S3 (bucket administration; objects go through `object_store`).
    pub s3: aws_sdk_s3::Client,
    /// The loaded SDK configuration (region, credentials, endpoint).
    pub sdk: SdkConfig,
    /// The deployment's prefix.
    pub prefix: String,
}

impl Clients {
    /// The region in use.
    pub fn region(&self) -> &str {
        self.sdk.region().map_or("us-east-1", Region::as_ref)
    }

    /// The endpoint override, if any.
    pub fn endpoint(&self) -> Option<&str> {
        self.sdk.endpoint_url()
    }

    /// The DynamoDB table that holds the ledger.
    pub fn table(&self) -> String {
        format!("{}ledger", self.prefix)
    }
}

/// The AWS engine of one deployment.
#[derive(Debug, Clone)]
pub struct AwsEngine {
    clients: Arc<Clients>,
}

impl AwsEngine {
    /// Loads region and credentials from the standard AWS chain (overridden by `config`) and
    /// builds the clients; makes no call yet.
    pub async fn connect(config: AwsConfig) -> Result<Self> {
        config.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            // Throttling and transient errors are retried with exponential backoff and jitter.
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(6)
                    .with_initial_backoff(Duration::from_millis(50)),
            );
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        if let Some((key, secret)) = &config.credentials {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                key.clone(),
                secret.clone(),
                None,
                None,
                "nimbus-config",
            ));
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(Error::invalid(
                "no AWS region: pass aws://?region=R or set AWS_REGION",
            ));
        }
        let s3_config = aws_sdk_s3::config::Builder::from(&sdk)
            // Emulators serve buckets under the path, not as subdomains.
            .force_path_style(config.endpoint.is_some())
            .build();
        let clients = Clients {
            sqs: aws_sdk_sqs::Client::new(&sdk),
            sns: aws_sdk_sns::Client::new(&sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            sdk,
            prefix: config.prefix,
        };
        Ok(Self {
            clients: Arc::new(clients),
        })
    }

    /// The shared clients.
    pub fn clients(&self) -> &Arc<Clients> {
        &self.clients
    }

    /// The blob store at `location` with this engine's region, endpoint and credentials.
    pub fn blobs(&self, location: &S3Location) -> Result<Arc<dyn ObjectStore>> {
        blobs::open(&self.clients, location)
    }

    /// The queues tagged as this deployment's.
    pub async fn deployment_queues(&self) -> Result<Vec<nimbus_core::QueueName>> {
        queue::SqsQueue::new(self.clients.clone())
            .deployment_queues()
            .await
    }

    /// The four services, with blobs at `location`.
    pub fn engine(&self, location: &S3Location) -> Result<Engine> {
        Ok(Engine::new(
            Arc::new(queue::SqsQueue::new(self.clients.clone())),
            Arc::new(topic::SnsTopic::new(self.clients.clone())),
            Arc::new(ledger::DynamoLedger::new(self.clients.clone())),
            self.blobs(location)?,
        ))
    }
}

/// Whole seconds for a duration SQS takes in seconds, rounded up (a lease or a wait is never
/// shorter than asked).
pub(crate) fn ceil_secs(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert!(AwsConfig::default().validate().is_ok());
        let empty = AwsConfig {
            prefix: String::new(),
            ..AwsConfig::default()
        };
        assert!(empty.validate().unwrap_err().to_string().contains("empty"));
        let bad = AwsConfig {
            prefix: "a.b".into(),
            ..AwsConfig::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains('.'));
        let long = AwsConfig {
            prefix: "x".repeat(MAX_PREFIX + 1),
            ..AwsConfig::default()
        };
        assert!(long.validate().is_err());
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
