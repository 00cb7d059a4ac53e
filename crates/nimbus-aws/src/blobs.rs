//! Blobs on S3 through `object_store`, with the region, endpoint and credentials of the engine's
//! AWS configuration (the standard chain, so an instance profile or a profile file works too).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use nimbus_core::{Error, ObjectStore, Result};
use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::prefix::PrefixStore;
use object_store::CredentialProvider;
use tokio::sync::Mutex;

use crate::Clients;

/// A bucket and an optional key prefix: `s3://BUCKET[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// Keys start with this (no leading or trailing `/`); empty for the whole bucket.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://BUCKET[/PREFIX]`; the error names what is wrong.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::invalid(format!("blob url `{url}` is not s3://BUCKET[/PREFIX]"))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !valid_bucket {
            return Err(Error::invalid(format!(
                "blob url `{url}`: bucket `{bucket}` must be 3 to 63 of lowercase letters, digits, `-` and `.`"
            )));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}", self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// The S3 store at `location`.
pub fn open(clients: &Clients, location: &S3Location) -> Result<Arc<dyn ObjectStore>> {
    let credentials = clients.sdk.credentials_provider().ok_or_else(|| {
        Error::invalid(
            "no AWS credentials provider: set AWS_ACCESS_KEY_ID or use a profile or instance role",
        )
    })?;
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&location.bucket)
        .with_region(clients.region())
        .with_credentials(Arc::new(ChainCredentials::new(credentials)));
    if let Some(endpoint) = clients.endpoint() {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    let store = builder.build().map_err(|e| {
        Error::invalid(format!("cannot use blob store {location}: {e}")).with_source(e)
    })?;
    Ok(if location.prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, location.prefix.as_str()))
    })
}

/// How long before a credential expires it is fetched again.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// The SDK's credential chain as an `object_store` credential provider, caching the credential
/// until shortly before it expires (the chain itself does not cache).
#[derive(Debug)]
struct ChainCredentials {
    chain: SharedCredentialsProvider,
    cached: Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

impl ChainCredentials {
    fn new(chain: SharedCredentialsProvider) -> Self {
        Self {
            chain,
            cached: Mutex::new(None),
        }
    }
}

#[async_trait]
impl CredentialProvider for ChainCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((credential, expiry)) = cached.as_ref() {
            let fresh = expiry.is_none_or(|at| SystemTime::now() + REFRESH_BEFORE < at);
            if fresh {
                return Ok(credential.clone());
            }
        }
        let got =
            self.chain
                .provide_credentials()
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: "S3",
                    source: Box::new(e),
                })?;
        let credential = Arc::new(AwsCredential {
            key_id: got.access_key_id().to_string(),
            secret_key: got.secret_access_key().to_string(),
            token: got.session_token().map(str::to_string),
        });
        *cached = Some((credential.clone(), got.expiry()));
        Ok(credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_name_what_is_wrong() {
        let loc = S3Location::parse("s3://my-bucket/deploy/a/").unwrap();
        assert_eq!(
            (loc.bucket.as_str(), loc.prefix.as_str()),
            ("my-bucket", "deploy/a")
        );
        assert_eq!(loc.to_string(), "s3://my-bucket/deploy/a");
        assert_eq!(S3Location::parse("s3://bkt").unwrap().prefix, "");
        assert!(S3Location::parse("file:///x")
            .unwrap_err()
            .to_string()
            .contains("s3://"));
        assert!(S3Location::parse("s3://Upper")
            .unwrap_err()
            .to_string()
            .contains("bucket"));
        assert!(S3Location::parse("s3://ab").is_err());
    }
}
