//! The deployment's fixed resources, made and removed idempotently: the ledger's DynamoDB table
//! and the blob bucket. Queues and topics are made through the engine traits by `nimbus aws up`.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, Select,
    TableStatus,
};
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use futures::TryStreamExt;
use nimbus_core::{Error, ErrorKind, Result};

use crate::error::sdk_error;
use crate::{Clients, S3Location};

/// How long a new table may take to become usable.
const TABLE_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What one provisioning step found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It was made now.
    Created,
    /// It was there already.
    Existed,
    /// It was removed now.
    Removed,
    /// There was nothing to remove.
    Absent,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Existed => "exists",
            Self::Removed => "removed",
            Self::Absent => "absent",
        })
    }
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| Error::internal("cannot build a key schema").with_source(e))
}

fn string_attribute(name: &str) -> Result<AttributeDefinition> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| Error::internal("cannot build an attribute definition").with_source(e))
}

/// Creates the ledger table (on-demand capacity) unless it exists, and waits until it is active.
pub async fn create_table(clients: &Clients) -> Result<Outcome> {
    let table = clients.table();
    let created = clients
        .dynamodb
        .create_table()
        .table_name(&table)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .attribute_definitions(string_attribute("pk")?)
        .attribute_definitions(string_attribute("sk")?)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .map_err(|e| sdk_error(format!("create table `{table}`"), e));
    let outcome = match created {
        Ok(_) => Outcome::Created,
        Err(e) if e.kind() == ErrorKind::Conflict => Outcome::Existed,
        Err(e) => return Err(e),
    };
    let deadline = Instant::now() + TABLE_READY_TIMEOUT;
    loop {
        let status = clients
            .dynamodb
            .describe_table()
            .table_name(&table)
            .send()
            .await
            .map_err(|e| sdk_error(format!("describe table `{table}`"), e))?
            .table
            .and_then(|t| t.table_status);
        if status == Some(TableStatus::Active) {
            enable_expiry(clients, &table).await;
            return Ok(outcome);
        }
        if Instant::now() > deadline {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("table `{table}` is not active after {TABLE_READY_TIMEOUT:?} ({status:?})"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Lets DynamoDB delete expired items (the tokens of counter adds); a table that has it already,
/// or a service that cannot, only loses the clean-up, which is logged.
async fn enable_expiry(clients: &Clients, table: &str) {
    use aws_sdk_dynamodb::types::TimeToLiveSpecification;
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(crate::ledger::TTL_ATTRIBUTE)
        .build();
    let Ok(spec) = spec else { return };
    if let Err(e) = clients
        .dynamodb
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
    {
        let e = sdk_error(format!("enable expiry on table `{table}`"), e);
        tracing::debug!(error = %e, "time to live not changed (already on, or not supported)");
    }
}

/// Deletes the ledger table if there is one.
pub async fn delete_table(clients: &Clients) -> Result<Outcome> {
    let table = clients.table();
    match clients
        .dynamodb
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .map_err(|e| sdk_error(format!("delete table `{table}`"), e))
    {
        Ok(_) => Ok(Outcome::Removed),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Outcome::Absent),
        Err(e) => Err(e),
    }
}

/// The number of items in the ledger table (a counting scan: exact, and paid per item read).
pub async fn table_item_count(clients: &Clients) -> Result<u64> {
    let table = clients.table();
    let counts: Vec<i32> = clients
        .dynamodb
        .scan()
        .table_name(&table)
        .select(Select::Count)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|e| sdk_error(format!("count items of table `{table}`"), e))?
        .into_iter()
        .map(|page| page.count)
        .collect();
    Ok(counts
        .into_iter()
        .map(|c| u64::try_from(c).unwrap_or(0))
        .sum())
}

/// Creates the bucket unless this account has it already.
pub async fn create_bucket(clients: &Clients, location: &S3Location) -> Result<Outcome> {
    let bucket = &location.bucket;
    // In us-east-1 S3 answers success to creating a bucket one owns already: ask first.
    if clients.s3.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(Outcome::Existed);
    }
    let mut request = clients.s3.create_bucket().bucket(bucket);
    // us-east-1 is the one region that takes no location constraint.
    if clients.region() != "us-east-1" {
        request = request.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(clients.region()))
                .build(),
        );
    }
    match request.send().await {
        Ok(_) => Ok(Outcome::Created),
        Err(e) => {
            let owned = e
                .as_service_error()
                .is_some_and(|s| s.is_bucket_already_owned_by_you());
            if owned {
                Ok(Outcome::Existed)
            } else {
                Err(sdk_error(format!("create bucket `{bucket}`"), e))
            }
        }
    }
}

/// Deletes every object under the location's prefix, then the bucket if that left it empty.
/// Returns the number of objects deleted and what became of the bucket.
pub async fn delete_blobs(clients: &Clients, location: &S3Location) -> Result<(usize, Outcome)> {
    let store = crate::blobs::open(clients, location)?;
    let paths: Vec<_> = store
        .list(None)
        .map_ok(|meta| Ok(meta.location))
        .try_collect()
        .await
        .map_err(|e| blob_error(location, e))?;
    let count = paths.len();
    store
        .delete_stream(Box::pin(futures::stream::iter(paths)))
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| blob_error(location, e))?;
    let bucket = &location.bucket;
    let outcome = match clients.s3.delete_bucket().bucket(bucket).send().await {
        Ok(_) => Outcome::Removed,
        Err(e) => {
            let err = sdk_error(format!("delete bucket `{bucket}`"), e);
            match err.kind() {
                ErrorKind::NotFound => Outcome::Absent,
                // Objects outside the prefix (another deployment's) keep the bucket.
                _ if err.to_string().contains("BucketNotEmpty") => Outcome::Existed,
                _ => return Err(err),
            }
        }
    };
    Ok((count, outcome))
}

fn blob_error(location: &S3Location, e: object_store::Error) -> Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, format!("blobs at {location}: {e}")).with_source(e)
}
