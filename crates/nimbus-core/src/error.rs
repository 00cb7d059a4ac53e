//! The engine-neutral error every engine call returns.

use std::fmt;

/// What went wrong, in terms that do not depend on the engine behind the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The queue, topic, item or receipt does not exist (or no longer does).
    NotFound,
    /// The target already exists with different settings, or a condition failed.
    Conflict,
    /// The caller's input is malformed or out of range; the message names the field.
    InvalidInput,
    /// The engine asked the caller to slow down.
    Throttled,
    /// The engine could not be reached or is busy; trying again may work.
    Unavailable,
    /// The call did not finish in time.
    Timeout,
    /// A bug or an unexpected state inside the engine.
    Internal,
}

impl ErrorKind {
    /// Whether a call that failed with this kind may succeed if repeated unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Throttled | Self::Unavailable | Self::Timeout)
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not found",
            Self::Conflict => "conflict",
            Self::InvalidInput => "invalid input",
            Self::Throttled => "throttled",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An engine error: a kind, a lowercase message and, where there is one, the source.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    retryable: bool,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The result of an engine call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind`; retryable as the kind says.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retryable: kind.is_retryable(),
            source: None,
        }
    }

    /// Shorthand for [`ErrorKind::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for [`ErrorKind::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// Shorthand for [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Overrides whether the call may be retried (an engine may know better than the kind).
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Puts `what` in front of the message (`what: message`), keeping the kind and the source.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// The engine-neutral kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether repeating the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_follows_the_kind_unless_overridden() {
        assert!(Error::new(ErrorKind::Throttled, "slow down").is_retryable());
        assert!(!Error::invalid("bad").is_retryable());
        assert!(!Error::new(ErrorKind::Unavailable, "x")
            .with_retryable(false)
            .is_retryable());
    }

    #[test]
    fn display_is_the_message_and_the_source_is_kept() {
        let io = std::io::Error::other("disk gone");
        let err = Error::new(ErrorKind::Unavailable, "cannot open database").with_source(io);
        assert_eq!(err.to_string(), "cannot open database");
        assert!(std::error::Error::source(&err).is_some());
        assert_eq!(err.kind().to_string(), "unavailable");
    }
}
