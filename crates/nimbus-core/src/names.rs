//! Validated names of queues and topics, with the character rules SQS and SNS enforce.

use std::fmt;

use crate::error::{Error, Result};

/// The suffix that marks a FIFO queue, as in SQS.
pub const FIFO_SUFFIX: &str = ".fifo";

const MAX_QUEUE_NAME: usize = 80;
const MAX_TOPIC_NAME: usize = 256;

fn check_name(what: &str, name: &str, max: usize) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!("{what} name is empty")));
    }
    if name.len() > max {
        return Err(Error::invalid(format!(
            "{what} name `{name}` is {} characters long; the limit is {max}",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(Error::invalid(format!(
            "{what} name `{name}` contains `{bad}`; use letters, digits, `-` and `_`"
        )));
    }
    Ok(())
}

/// A queue name: 1 to 80 of `[A-Za-z0-9_-]`, optionally followed by `.fifo` (counted in the 80),
/// which makes the queue first-in-first-out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(String);

impl QueueName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.len() > MAX_QUEUE_NAME {
            return Err(Error::invalid(format!(
                "queue name `{name}` is {} characters long; the limit is {MAX_QUEUE_NAME}",
                name.len()
            )));
        }
        let stem = name.strip_suffix(FIFO_SUFFIX).unwrap_or(&name);
        if stem.is_empty() && !name.is_empty() {
            return Err(Error::invalid(format!(
                "queue name `{name}` has no name before `.fifo`"
            )));
        }
        check_name("queue", stem, MAX_QUEUE_NAME)?;
        Ok(Self(name))
    }

    /// Whether the queue is FIFO (its name ends in `.fifo`).
    pub fn is_fifo(&self) -> bool {
        self.0.ends_with(FIFO_SUFFIX)
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A topic name: 1 to 256 of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        check_name("topic", &name, MAX_TOPIC_NAME)?;
        Ok(Self(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! name_traits {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
name_traits!(QueueName);
name_traits!(TopicName);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn accepts_sqs_style_names() {
        assert!(!QueueName::new("tasks").unwrap().is_fifo());
        assert!(QueueName::new("jobs-1_a.fifo").unwrap().is_fifo());
        assert!(QueueName::new("a".repeat(80)).is_ok());
        assert!(QueueName::new(format!("{}.fifo", "a".repeat(75))).is_ok());
    }

    #[test]
    fn refuses_what_sqs_refuses_and_names_the_problem() {
        for (bad, says) in [
            ("", "empty"),
            ("has space", "` `"),
            ("dot.name", "`.`"),
            (".fifo", "no name before"),
            ("ünï", "`ü`"),
        ] {
            let err = QueueName::new(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
        let long = QueueName::new("a".repeat(81)).unwrap_err();
        assert!(long.to_string().contains("limit is 80"), "{long}");
        let long_fifo = QueueName::new(format!("{}.fifo", "a".repeat(76))).unwrap_err();
        assert!(long_fifo.to_string().contains("limit"), "{long_fifo}");
    }

    #[test]
    fn topic_names() {
        assert!(TopicName::new("events").is_ok());
        assert!(TopicName::new("ev.fifo").is_err());
        assert!(TopicName::new("a".repeat(257)).is_err());
    }
}
