//! nimbus's L7 load balancer (seed 003's ALB on one machine): listeners (HTTP, or HTTPS with
//! rustls), path rules to target groups, round robin or least outstanding requests, active
//! health checks and passive ejection, keep-alive pools, retries of idempotent requests,
//! deregistration delay, graceful shutdown, reload without dropping connections, WebSocket and
//! SSE pass-through, and ALB's metrics on its admin listener. Built on hyper; no HTTP parsing
//! of its own.

mod admin;
pub mod config;
mod health;
pub mod metrics;
mod pattern;
mod pool;
mod proxy;
mod server;
mod target;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError};
pub use pattern::PathPattern;
pub use target::TargetStatus;

use crate::config::{Action, Limits};
use crate::metrics::LbMetrics;
use crate::target::{Group, Target};

/// A body's error: a target's stream that broke, or one cut by the balancer.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bodies in both directions: a stream passed through, or one the balancer made.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// What can stop the balancer from starting.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be opened.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate or key could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
}

/// Where a request goes once its path is matched.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    Forward { rule: Arc<str>, group: Arc<Group> },
    Fixed { status: u16, body: String },
}

/// The rules and groups in force; replaced as a whole by a reload.
#[derive(Debug)]
pub(crate) struct Routing {
    rules: Vec<(PathPattern, Route)>,
    default: Route,
    groups: BTreeMap<String, Arc<Group>>,
    limits: Limits,
}

impl Routing {
    /// The route of `path`: the first rule that matches, else the default action.
    pub(crate) fn route(&self, path: &str) -> &Route {
        self.rules
            .iter()
            .find(|(pattern, _)| pattern.matches(path))
            .map_or(&self.default, |(_, route)| route)
    }
}

/// What every connection and task of the balancer shares.
pub(crate) struct Shared {
    routing: RwLock<Arc<Routing>>,
    metrics: LbMetrics,
    shutdown: CancellationToken,
}

impl Shared {
    pub(crate) fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A running balancer's handle: reload it, read its status.
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
    config: Arc<RwLock<Config>>,
}

impl Balancer {
    /// Builds the routing of `config` (checked) and starts its health checks, until `shutdown`.
    pub fn new(config: Config, shutdown: CancellationToken) -> Result<Self, LbError> {
        config.validate()?;
        let metrics = LbMetrics::default();
        let routing = build_routing(&config, &BTreeMap::new(), &metrics);
        let shared = Arc::new(Shared {
            routing: RwLock::new(Arc::new(routing)),
            metrics,
            shutdown,
        });
        for group in shared.routing().groups.values() {
            for target in &group.targets {
                health::start(&shared, target.clone());
            }
        }
        Ok(Self {
            shared,
            config: Arc::new(RwLock::new(config)),
        })
    }

    /// Replaces the rules, groups and targets with `config`'s (listeners and the admin address
    /// stay as they were started: changing them takes a restart). Targets kept keep their
    /// health, counters and connections; new ones start healthy with their checks; removed ones
    /// take no new request and keep their open ones for the group's deregistration delay.
    /// A wrong configuration changes nothing.
    pub fn reload(&self, config: Config) -> Result<(), LbError> {
        let result = self.try_reload(config);
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.shared
            .metrics
            .reloads
            .get_or_create(&metrics::GroupLabel {
                group: outcome.into(),
            })
            .inc();
        result
    }

    fn try_reload(&self, config: Config) -> Result<(), LbError> {
        config.validate()?;
        let mut current = self
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.listeners != config.listeners || current.admin != config.admin {
            tracing::warn!("listener and admin changes take effect on a restart");
        }
        let old = self.shared.routing();
        let routing = Arc::new(build_routing(&config, &old.groups, &self.shared.metrics));
        *self
            .shared
            .routing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = routing.clone();
        let was = |t: &Arc<Target>, r: &Routing| {
            r.groups
                .values()
                .flat_map(|g| &g.targets)
                .any(|x| Arc::ptr_eq(x, t))
        };
        // Checks start once the new routing is in place (a check finds its group there).
        for target in routing.groups.values().flat_map(|g| &g.targets) {
            if !was(target, &old) {
                health::start(&self.shared, target.clone());
            }
        }
        for group in old.groups.values() {
            for target in group.targets.iter().filter(|t| !was(t, &routing)) {
                deregister(target.clone(), group.config.deregistration_delay);
            }
        }
        *current = config;
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Serves every listener of the configuration and its admin address, until the shutdown
    /// token; then lets open requests finish for the configured drain time.
    pub async fn run(&self) -> Result<(), LbError> {
        let (listeners, admin) = self.open().await?;
        self.serve(listeners, admin).await
    }

    /// Opens the configuration's listeners now (to learn their ports), returning them to
    /// [`Balancer::serve`].
    pub async fn open(&self) -> Result<(Vec<server::Listener>, Option<TcpListener>), LbError> {
        let config = self
            .config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut listeners = Vec::new();
        for l in &config.listeners {
            listeners.push(server::Listener::open(l).await?);
        }
        let admin = match config.admin {
            Some(address) => Some(server::bind(&address.to_string()).await?),
            None => None,
        };
        Ok((listeners, admin))
    }

    /// Serves `listeners` (and the admin endpoints on `admin`) until the shutdown token.
    pub async fn serve(
        &self,
        listeners: Vec<server::Listener>,
        admin: Option<TcpListener>,
    ) -> Result<(), LbError> {
        let limits = self.shared.routing().limits.clone();
        let count = match limits.workers {
            0 => std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            n => n,
        };
        let workers = Arc::new(
            server::Workers::start(count, limits.drain).map_err(|source| LbError::Listen {
                address: "worker threads".into(),
                source,
            })?,
        );
        let mut tasks = tokio::task::JoinSet::new();
        for listener in listeners {
            tasks.spawn(server::serve_proxy(
                self.shared.clone(),
                listener,
                workers.clone(),
            ));
        }
        if let Some(admin) = admin {
            tasks.spawn(server::serve_admin(
                self.shared.clone(),
                admin,
                workers.clone(),
            ));
        }
        while tasks.join_next().await.is_some() {}
        if let Ok(workers) = Arc::try_unwrap(workers) {
            workers.finish().await;
        }
        Ok(())
    }

    /// Every group's targets as the status page shows them.
    pub fn status(&self) -> serde_json::Value {
        admin::status_json(&self.shared)
    }

    /// The metrics exposition's text.
    pub fn metrics_text(&self) -> String {
        admin::metrics_text(&self.shared)
    }
}

pub use server::Listener;

/// The routing of `config`, reusing the targets of `old` groups that stay.
fn build_routing(
    config: &Config,
    old: &BTreeMap<String, Arc<Group>>,
    metrics: &LbMetrics,
) -> Routing {
    let groups: BTreeMap<String, Arc<Group>> = config
        .groups
        .iter()
        .map(|(name, gc)| {
            let targets = gc
                .targets
                .iter()
                .map(|addr| {
                    old.get(name)
                        .and_then(|g| g.targets.iter().find(|t| &t.addr == addr).cloned())
                        .unwrap_or_else(|| Arc::new(Target::new(name, addr, metrics)))
                })
                .collect();
            (
                name.clone(),
                Arc::new(Group::new(name, gc.clone(), targets)),
            )
        })
        .collect();
    let rules = config
        .rules
        .iter()
        .filter_map(|r| {
            let pattern = PathPattern::parse(&r.path).ok()?;
            let route = Route::Forward {
                rule: Arc::from(pattern.as_str()),
                group: groups.get(&r.group)?.clone(),
            };
            Some((pattern, route))
        })
        .collect();
    let default = match &config.default_action {
        Some(Action::Forward { group }) => match groups.get(group) {
            Some(g) => Route::Forward {
                rule: Arc::from("default"),
                group: g.clone(),
            },
            None => not_found(),
        },
        Some(Action::Fixed { status, body }) => Route::Fixed {
            status: *status,
            body: body.clone(),
        },
        None => not_found(),
    };
    Routing {
        rules,
        default,
        groups,
        limits: config.limits.clone(),
    }
}

fn not_found() -> Route {
    Route::Fixed {
        status: 404,
        body: "no rule of this load balancer matches the path\n".into(),
    }
}

/// Stops sending to a removed target; cuts what it still serves after `delay`.
fn deregister(target: Arc<Target>, delay: Duration) {
    target.removed.cancel();
    tracing::info!(target = %target.addr, group = %target.labels.group, "target deregistered; draining");
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + delay;
        while target.outstanding() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if target.outstanding() > 0 {
            tracing::warn!(target = %target.addr, open = target.outstanding(), "deregistration delay over; cutting open requests");
        }
        target.cut.cancel();
    });
}
