//! AWS SDK errors mapped to nimbus's engine-neutral kinds, keeping the service's code and message.

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use nimbus_core::{Error, ErrorKind};

/// Service error codes that mean "slow down" (the SDK has already retried them with backoff).
const THROTTLED: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "SlowDown",
    "KMSThrottlingException",
    "PurgeQueueInProgress",
    "AWS.SimpleQueueService.PurgeQueueInProgress",
];

/// Service error codes that mean the named thing does not exist.
const NOT_FOUND: &[&str] = &[
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "NonExistentQueue",
    "NotFound",
    "NotFoundException",
    "ResourceNotFoundException",
    "NoSuchBucket",
    "NoSuchKey",
    "InvalidInstanceID.NotFound",
    "AWS.SimpleQueueService.MessageNotInflight",
    "MessageNotInflight",
];

/// Service error codes that say the caller's credentials or IAM policy do not allow the call:
/// nothing the caller's input or a retry can fix, and never a sign that the target is gone.
const DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "AuthorizationError",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "UnauthorizedOperation",
];

/// Service error codes for a name SQS refuses for a while after its queue was deleted.
const COOLING_DOWN: &[&str] = &[
    "AWS.SimpleQueueService.QueueDeletedRecently",
    "QueueDeletedRecently",
];

/// Service error codes that mean the thing exists with other settings, or a condition failed.
const CONFLICT: &[&str] = &[
    "QueueAlreadyExists",
    "QueueNameExists",
    "ResourceInUseException",
    "ConditionalCheckFailedException",
    "TransactionConflictException",
    "BucketAlreadyExists",
    "IncorrectInstanceState",
];

/// Service error codes for a bad request that resending unchanged will not fix.
const INVALID: &[&str] = &[
    "InvalidParameterValue",
    "InvalidParameterValueException",
    "InvalidParameter",
    "InvalidParameterException",
    "InvalidAttributeName",
    "InvalidAttributeValue",
    "InvalidMessageContents",
    "ReceiptHandleIsInvalid",
    "InvalidBatchEntryId",
    "BatchEntryIdsNotDistinct",
    "BatchRequestTooLong",
    "TooManyEntriesInBatchRequest",
    "EmptyBatchRequest",
    "MissingParameter",
    "ValidationException",
    "ValidationError",
    "InvalidAMIID.Malformed",
    "InvalidAMIID.NotFound",
    "UnsupportedOperation",
];

/// The engine-neutral kind of a service error code, if the code is one we know.
pub fn kind_of_code(code: &str) -> Option<ErrorKind> {
    let is = |list: &[&str]| list.contains(&code);
    if is(DENIED) {
        Some(ErrorKind::Internal)
    } else if is(COOLING_DOWN) {
        Some(ErrorKind::Unavailable)
    } else if is(THROTTLED) {
        Some(ErrorKind::Throttled)
    } else if is(NOT_FOUND) {
        Some(ErrorKind::NotFound)
    } else if is(CONFLICT) {
        Some(ErrorKind::Conflict)
    } else if is(INVALID) {
        Some(ErrorKind::InvalidInput)
    } else {
        None
    }
}

/// Maps an SDK error of any AWS service to a nimbus error whose message starts with `what`
/// (the call and its target, e.g. "send to queue `jobs`") and names the service's code.
pub fn sdk_error<E>(what: impl std::fmt::Display, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, detail) = match &err {
        SdkError::TimeoutError(_) => (ErrorKind::Timeout, "the call timed out".to_string()),
        SdkError::DispatchFailure(_) => (
            ErrorKind::Unavailable,
            format!(
                "the service could not be reached ({})",
                aws_sdk_sqs::error::DisplayErrorContext(&err)
            ),
        ),
        SdkError::ResponseError(_) => (
            ErrorKind::Unavailable,
            "the service's response could not be read".to_string(),
        ),
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or("Unknown");
            let message = ctx.err().message().unwrap_or("");
            let kind = kind_of_code(code).unwrap_or_else(|| {
                if ctx.raw().status().is_server_error() {
                    ErrorKind::Unavailable
                } else {
                    ErrorKind::Internal
                }
            });
            let hint = if DENIED.contains(&code) {
                " (check the credentials and the role's IAM policy: deploy/aws/iam/)"
            } else {
                ""
            };
            (kind, format!("{code}: {message}{hint}"))
        }
        other => (
            ErrorKind::Internal,
            aws_sdk_sqs::error::DisplayErrorContext(other).to_string(),
        ),
    };
    Error::new(kind, format!("{what}: {detail}")).with_source(err)
}

/// A `NotFound` error restated as "`what` does not exist" (the service's own words kept as the
/// source); any other error unchanged.
pub fn missing_is_named(err: Error, what: impl std::fmt::Display) -> Error {
    if err.kind() == ErrorKind::NotFound {
        Error::not_found(format!("{what} does not exist")).with_source(err)
    } else {
        err
    }
}

/// An error for an answer the service should never give (a missing field).
pub fn malformed(what: impl std::fmt::Display, field: &str) -> Error {
    Error::internal(format!("{what}: the service's answer has no {field}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(
            kind_of_code("ThrottlingException"),
            Some(ErrorKind::Throttled)
        );
        assert_eq!(
            kind_of_code("AWS.SimpleQueueService.NonExistentQueue"),
            Some(ErrorKind::NotFound)
        );
        assert_eq!(
            kind_of_code("ConditionalCheckFailedException"),
            Some(ErrorKind::Conflict)
        );
        assert_eq!(
            kind_of_code("ReceiptHandleIsInvalid"),
            Some(ErrorKind::InvalidInput)
        );
        assert_eq!(
            kind_of_code("AccessDenied"),
            Some(ErrorKind::Internal),
            "never NotFound"
        );
        assert_eq!(
            kind_of_code("AWS.SimpleQueueService.QueueDeletedRecently"),
            Some(ErrorKind::Unavailable)
        );
        assert_eq!(
            kind_of_code("AWS.SimpleQueueService.MessageNotInflight"),
            Some(ErrorKind::NotFound)
        );
        assert_eq!(kind_of_code("SomethingNew"), None);
    }
}
