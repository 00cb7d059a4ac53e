//! The balancer's configuration: listeners, path rules, a default action and target groups with
//! their balancing, health checks, passive ejection and deregistration delay; read from TOML or
//! built from the command line's simple case, and checked as a whole before it is used.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::pattern::PathPattern;

/// What can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not describe a configuration.
    #[error("{0}")]
    Parse(String),
    /// A value is out of its bounds or refers to nothing.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where clients connect (`[[listener]]`).
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Where the balancer's own `/metrics`, `/status` and `/status.json` are served.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// Path rules, first match wins (`[[rule]]`).
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// What a request no rule matches gets (`[default]`): a group, or a fixed response.
    #[serde(default, rename = "default")]
    pub default_action: Option<Action>,
    /// Target groups by name (`[group.NAME]`).
    #[serde(default, rename = "group")]
    pub groups: BTreeMap<String, GroupConfig>,
    /// Timeouts, sizes and retries (`[limits]`).
    #[serde(default)]
    pub limits: Limits,
}

/// A listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The address to listen on, such as `127.0.0.1:8000`.
    pub bind: SocketAddr,
    /// Serve HTTPS with this certificate and key.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A path rule: requests whose path matches `path` go to `group`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// ALB's path pattern: case-sensitive, `*` any run of characters, `?` one character.
    pub path: String,
    /// The target group.
    pub group: String,
}

/// The default action.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Action {
    /// Forward to a group.
    Forward {
        /// The group.
        group: String,
    },
    /// Answer this status and body from the balancer itself.
    Fixed {
        /// An HTTP status, 200 to 599.
        status: u16,
        /// The body, plain text.
        #[serde(default)]
        body: String,
    },
}

/// How a group picks a target for a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each target in turn.
    #[default]
    RoundRobin,
    /// The one with fewer requests in flight of two picked at random (Envoy's least-request).
    LeastOutstanding,
}

impl std::str::FromStr for Balance {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "round-robin" => Ok(Self::RoundRobin),
            "least-outstanding" => Ok(Self::LeastOutstanding),
            other => Err(invalid(format!(
                "unknown balance `{other}`: round-robin or least-outstanding"
            ))),
        }
    }
}

/// A target group.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The targets, `HOST:PORT` each.
    #[serde(default)]
    pub targets: Vec<String>,
    /// How a target is picked.
    #[serde(default)]
    pub balance: Balance,
    /// Active health checks.
    #[serde(default)]
    pub health: HealthConfig,
    /// Passive ejection of targets that fail requests.
    #[serde(default)]
    pub ejection: EjectionConfig,
    /// How long a removed target keeps serving the requests it has (ALB's deregistration
    /// delay); after it they are cut.
    #[serde(default = "default_deregistration", deserialize_with = "duration")]
    pub deregistration_delay: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            balance: Balance::default(),
            health: HealthConfig::default(),
            ejection: EjectionConfig::default(),
            deregistration_delay: default_deregistration(),
        }
    }
}

fn default_deregistration() -> Duration {
    Duration::from_secs(30)
}

/// Active health checks: `GET path` every `interval`; a target is taken out after
/// `unhealthy_threshold` failures in a row and back after `healthy_threshold` successes (HAProxy's
/// `inter 2s fall 3 rise 2`). A check passes on a 2xx or 3xx within `timeout`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Whether checks run.
    pub enabled: bool,
    /// The path checked.
    pub path: String,
    /// Between checks.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// The longest a check may take.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Successes in a row that make a target healthy.
    pub healthy_threshold: u32,
    /// Failures in a row that make a target unhealthy.
    pub unhealthy_threshold: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/healthz".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// Passive ejection (Envoy's outlier detection): a target that refuses a connection, or answers
/// `consecutive_5xx` 5xx in a row, is taken out for `base_time` times the number of times it
/// was, at most `max_time`; at most `max_percent` of a group's targets at once (at least one).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EjectionConfig {
    /// 5xx answers in a row that eject a target (0: never on 5xx).
    pub consecutive_5xx: u32,
    /// The first ejection's length.
    #[serde(deserialize_with = "duration")]
    pub base_time: Duration,
    /// The longest ejection.
    #[serde(deserialize_with = "duration")]
    pub max_time: Duration,
    /// The most of a group's targets ejected at once, in percent (at least one target).
    pub max_percent: u32,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            base_time: Duration::from_secs(30),
            max_time: Duration::from_secs(300),
            max_percent: 10,
        }
    }
}

/// Timeouts, sizes and retries.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// From sending a request to a target to its response head; after it the client gets 504.
    #[serde(deserialize_with = "duration")]
    pub response_timeout: Duration,
    /// To connect to a target.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// For a client to send a whole request head (slow clients are cut).
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// The largest request head, in bytes (larger: 431).
    pub max_header_bytes: usize,
    /// Further targets tried for an idempotent request without a body whose target failed
    /// before answering.
    pub retries: u32,
    /// On shutdown, how long open requests may finish.
    #[serde(deserialize_with = "duration")]
    pub drain: Duration,
    /// Idle keep-alive connections kept per target (per worker thread).
    pub pool_idle_per_target: usize,
    /// Threads serving connections (0: one per core).
    pub workers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            response_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            retries: 2,
            drain: Duration::from_secs(30),
            pool_idle_per_target: 256,
            workers: 0,
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration ({e})")))
}

/// The name of the group the command line's simple case makes.
pub const SIMPLE_GROUP: &str = "default";

impl Config {
    /// Reads and checks a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))
    }

    /// Parses and checks TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// One listener, one round-robin group of `targets`, every path to it.
    pub fn simple(listen: SocketAddr, targets: Vec<String>) -> Self {
        Self {
            listeners: vec![ListenerConfig {
                bind: listen,
                tls: None,
            }],
            admin: None,
            rules: Vec::new(),
            default_action: Some(Action::Forward {
                group: SIMPLE_GROUP.into(),
            }),
            groups: BTreeMap::from([(
                SIMPLE_GROUP.to_string(),
                GroupConfig {
                    targets,
                    ..GroupConfig::default()
                },
            )]),
            limits: Limits::default(),
        }
    }

    /// Checks every value and reference, naming the first that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(invalid(
                "no listener: add a [[listener]] with bind = \"HOST:PORT\"",
            ));
        }
        for rule in &self.rules {
            PathPattern::parse(&rule.path)?;
            self.group_exists(&rule.group, &format!("rule `{}`", rule.path))?;
        }
        match &self.default_action {
            Some(Action::Forward { group }) => self.group_exists(group, "the default action")?,
            Some(Action::Fixed { status, .. }) if !(200..=599).contains(status) => {
                return Err(invalid(format!(
                    "the default action's status {status} is not between 200 and 599"
                )))
            }
            _ => {}
        }
        for (name, group) in &self.groups {
            group.validate(name)?;
        }
        let l = &self.limits;
        if !(8192..=1 << 20).contains(&l.max_header_bytes) {
            return Err(invalid("limits.max_header_bytes must be 8192 to 1048576"));
        }
        if l.retries > 10 || l.workers > 1024 {
            return Err(invalid(
                "limits.retries is at most 10 and limits.workers at most 1024",
            ));
        }
        for (what, d) in [
            ("limits.response_timeout", l.response_timeout),
            ("limits.connect_timeout", l.connect_timeout),
            ("limits.header_read_timeout", l.header_read_timeout),
            ("limits.drain", l.drain),
        ] {
            check_duration(what, d, false)?;
        }
        Ok(())
    }

    fn group_exists(&self, group: &str, user: &str) -> Result<(), ConfigError> {
        if self.groups.contains_key(group) {
            Ok(())
        } else {
            Err(invalid(format!(
                "{user} names group `{group}`, which is not defined (add [group.{group}])"
            )))
        }
    }
}

impl GroupConfig {
    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(format!(
                "group name `{name}`: 1 to 64 letters, digits, `-`, `_` or `.`"
            )));
        }
        for target in &self.targets {
            check_target(target)
                .map_err(|why| invalid(format!("group `{name}`: target `{target}` {why}")))?;
        }
        let h = &self.health;
        if h.enabled {
            if !h.path.starts_with('/') {
                return Err(invalid(format!(
                    "group `{name}`: health.path `{}` must start with /",
                    h.path
                )));
            }
            if h.interval.is_zero() || h.timeout.is_zero() {
                return Err(invalid(format!(
                    "group `{name}`: health.interval and health.timeout must be above zero"
                )));
            }
            if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
                return Err(invalid(format!(
                    "group `{name}`: health thresholds must be at least 1"
                )));
            }
        }
        let e = &self.ejection;
        for (what, d) in [
            ("ejection.base_time", e.base_time),
            ("ejection.max_time", e.max_time),
            ("deregistration_delay", self.deregistration_delay),
            ("health.interval", h.interval),
            ("health.timeout", h.timeout),
        ] {
            check_duration(&format!("group `{name}`: {what}"), d, true)?;
        }
        if self.ejection.max_percent > 100 {
            return Err(invalid(format!(
                "group `{name}`: ejection.max_percent is at most 100"
            )));
        }
        Ok(())
    }
}

/// The longest duration any setting takes: a day.
const LONGEST: Duration = Duration::from_secs(24 * 3600);

fn check_duration(what: &str, d: Duration, zero_ok: bool) -> Result<(), ConfigError> {
    if d > LONGEST || (!zero_ok && d.is_zero()) {
        let low = if zero_ok { "0" } else { "above 0" };
        return Err(invalid(format!("{what} must be {low} and at most 24h")));
    }
    Ok(())
}

/// Whether `target` is `HOST:PORT` with a port.
fn check_target(target: &str) -> Result<(), &'static str> {
    let authority: http::uri::Authority = target.parse().map_err(|_| "is not HOST:PORT")?;
    if authority.port_u16().is_none() || authority.host().is_empty() || target.contains('@') {
        return Err("is not HOST:PORT");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        admin = "127.0.0.1:9000"
        [[listener]]
        bind = "127.0.0.1:8000"
        [[rule]]
        path = "/cluster1*"
        group = "cluster1"
        [default]
        status = 404
        body = "no such cluster"
        [group.cluster1]
        targets = ["127.0.0.1:8081", "localhost:8082"]
        balance = "least-outstanding"
        deregistration_delay = "5s"
        [group.cluster1.health]
        path = "/healthz"
        interval = "500ms"
        unhealthy_threshold = 2
    "#;

    #[test]
    fn a_whole_file_reads_with_defaults_for_what_it_leaves_out() {
        let c = Config::from_toml(EXAMPLE).unwrap();
        let g = &c.groups["cluster1"];
        assert_eq!(g.balance, Balance::LeastOutstanding);
        assert_eq!(g.health.interval, Duration::from_millis(500));
        assert_eq!(g.health.unhealthy_threshold, 2);
        assert_eq!(g.health.healthy_threshold, 2, "default");
        assert_eq!(g.deregistration_delay, Duration::from_secs(5));
        assert_eq!(
            c.default_action,
            Some(Action::Fixed {
                status: 404,
                body: "no such cluster".into()
            })
        );
    }

    #[test]
    fn wrong_values_are_refused_naming_them() {
        let cases = [
            (
                EXAMPLE.replace("group = \"cluster1\"", "group = \"nope\""),
                "group `nope`",
            ),
            (
                EXAMPLE.replace("\"localhost:8082\"", "\"localhost\""),
                "target `localhost`",
            ),
            (EXAMPLE.replace("status = 404", "status = 99"), "status 99"),
            (
                EXAMPLE.replace("\"500ms\"", "\"soon\""),
                "`soon` is not a duration",
            ),
            (
                EXAMPLE.replace("path = \"/cluster1*\"", "path = \"\""),
                "empty",
            ),
            (
                EXAMPLE.replace("balance = \"least-outstanding\"", "balance = \"random\""),
                "random",
            ),
            (
                EXAMPLE.replace("[[listener]]\n        bind = \"127.0.0.1:8000\"", ""),
                "no listener",
            ),
            (format!("{EXAMPLE}\nsurprise = 1"), "surprise"),
        ];
        for (text, expected) in cases {
            let e = Config::from_toml(&text).unwrap_err().to_string();
            assert!(e.contains(expected), "{expected:?} not in {e:?}");
        }
    }
}
