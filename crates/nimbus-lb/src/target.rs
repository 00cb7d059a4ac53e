//! Targets and target groups: each target's health (active checks), passive ejection, requests
//! in flight and figures; each group's choice of a target (round robin, or the less loaded of
//! two at random), with ALB's fail-open when no target is healthy.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Balance, GroupConfig};
use crate::metrics::{LbMetrics, TargetLabels, TargetMetrics};

/// A target of a group.
#[derive(Debug)]
pub struct Target {
    /// `HOST:PORT`.
    pub addr: String,
    /// Its metric labels.
    pub labels: TargetLabels,
    /// Its figures on the exposition.
    pub metrics: TargetMetrics,
    healthy: AtomicBool,
    checks: Mutex<CheckRun>,
    outstanding: AtomicU32,
    consecutive_5xx: AtomicU32,
    ejection: Mutex<Ejection>,
    /// Cancelled when the target is removed from its group (its health checks stop).
    pub removed: CancellationToken,
    /// Cancelled once its deregistration delay has passed: requests it still serves are cut.
    pub cut: CancellationToken,
    stats: Stats,
}

#[derive(Debug, Default)]
struct CheckRun {
    successes: u32,
    failures: u32,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Ejection {
    until: Option<Instant>,
    times: u32,
}

#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    answered_4xx: AtomicU64,
    answered_5xx: AtomicU64,
    failed: AtomicU64,
    response_micros: AtomicU64,
}

/// A target's state as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    /// `HOST:PORT`.
    pub target: String,
    /// Whether its health checks pass.
    pub healthy: bool,
    /// Whether it is ejected for failing requests.
    pub ejected: bool,
    /// Requests it is serving.
    pub in_flight: u32,
    /// Requests sent to it.
    pub requests: u64,
    /// 4xx it answered.
    pub target_4xx: u64,
    /// 5xx it answered.
    pub target_5xx: u64,
    /// Requests it failed before answering (refused, reset, timed out).
    pub failed: u64,
    /// Mean time to its response head, in milliseconds.
    pub mean_response_ms: f64,
    /// The last failed health check, if any.
    pub last_check_error: Option<String>,
}

impl Target {
    /// A healthy target at `addr` in `group`, counted in `metrics`.
    pub fn new(group: &str, addr: &str, metrics: &LbMetrics) -> Self {
        let labels = TargetLabels {
            group: group.to_string(),
            target: addr.to_string(),
        };
        Self {
            addr: addr.to_string(),
            metrics: metrics.for_target(&labels),
            labels,
            healthy: AtomicBool::new(true),
            checks: Mutex::default(),
            outstanding: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            ejection: Mutex::default(),
            removed: CancellationToken::new(),
            cut: CancellationToken::new(),
            stats: Stats::default(),
        }
    }

    /// Whether active health checks pass.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn ejected(&self, now: Instant) -> bool {
        lock(&self.ejection).until.is_some_and(|until| until > now)
    }

    fn available(&self, now: Instant) -> bool {
        self.healthy() && !self.ejected(now) && !self.removed.is_cancelled()
    }

    /// Requests in flight.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Records a health check's result; returns the new health when it changed.
    pub fn record_check(&self, result: Result<(), String>, rise: u32, fall: u32) -> Option<bool> {
        let mut run = lock(&self.checks);
        let was = self.healthy();
        let now = match result {
            Ok(()) => {
                run.successes += 1;
                run.failures = 0;
                was || run.successes >= rise
            }
            Err(e) => {
                run.failures += 1;
                run.successes = 0;
                run.last_error = Some(e);
                was && run.failures < fall
            }
        };
        self.healthy.store(now, Ordering::Relaxed);
        (now != was).then_some(now)
    }

    /// Records a response head from the target after `elapsed`.
    pub fn record_answer(&self, status: u16, elapsed: Duration) {
        self.stats.response_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        match status {
            400..=499 => {
                self.stats.answered_4xx.fetch_add(1, Ordering::Relaxed);
            }
            500..=599 => {
                self.stats.answered_5xx.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if status < 500 {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
        }
    }

    /// Records a request the target failed before answering.
    pub fn record_failure(&self) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a 5xx; whether it makes `threshold` in a row.
    pub fn count_5xx(&self, threshold: u32) -> bool {
        threshold > 0 && self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1 >= threshold
    }

    /// The status page's view.
    pub fn status(&self) -> TargetStatus {
        let requests = self.stats.requests.load(Ordering::Relaxed);
        let failed = self.stats.failed.load(Ordering::Relaxed);
        let answered = requests
            .saturating_sub(failed)
            .saturating_sub(u64::from(self.outstanding()));
        let micros = self.stats.response_micros.load(Ordering::Relaxed);
        TargetStatus {
            target: self.addr.clone(),
            healthy: self.healthy(),
            ejected: self.ejected(Instant::now()),
            in_flight: self.outstanding(),
            requests,
            target_4xx: self.stats.answered_4xx.load(Ordering::Relaxed),
            target_5xx: self.stats.answered_5xx.load(Ordering::Relaxed),
            failed,
            #[allow(clippy::cast_precision_loss)]
            mean_response_ms: if answered == 0 {
                0.0
            } else {
                micros as f64 / answered as f64 / 1000.0
            },
            last_check_error: lock(&self.checks).last_error.clone(),
        }
    }
}

/// A request in flight to a target.
#[derive(Debug)]
pub struct InFlight(Arc<Target>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A target group.
#[derive(Debug)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Its targets.
    pub targets: Vec<Arc<Target>>,
    /// Its configuration.
    pub config: GroupConfig,
    next: AtomicUsize,
    ejecting: Mutex<()>,
}

impl Group {
    /// A group of `targets`.
    pub fn new(name: &str, config: GroupConfig, targets: Vec<Arc<Target>>) -> Self {
        Self {
            name: name.to_string(),
            targets,
            config,
            next: AtomicUsize::new(0),
            ejecting: Mutex::new(()),
        }
    }

    /// Healthy targets that are not ejected.
    pub fn healthy_count(&self) -> usize {
        let now = Instant::now();
        self.targets.iter().filter(|t| t.available(now)).count()
    }

    /// A target for a request, none of `tried`: among the available ones, or, when none of the
    /// group's targets is available, among all of them (ALB's fail-open); `None` once every
    /// candidate was tried or the group is empty.
    pub fn pick(&self, tried: &[Arc<Target>]) -> Option<Arc<Target>> {
        let now = Instant::now();
        let untried = |t: &&Arc<Target>| !tried.iter().any(|x| Arc::ptr_eq(x, t));
        let mut candidates: Vec<&Arc<Target>> = self
            .targets
            .iter()
            .filter(|t| t.available(now))
            .filter(untried)
            .collect();
        if candidates.is_empty() && self.healthy_count() == 0 {
            candidates = self
                .targets
                .iter()
                .filter(|t| !t.removed.is_cancelled())
                .filter(untried)
                .collect();
        }
        let chosen = match (candidates.len(), self.config.balance) {
            (0, _) => return None,
            (1, _) => candidates[0],
            (n, Balance::RoundRobin) => candidates[self.next.fetch_add(1, Ordering::Relaxed) % n],
            (n, Balance::LeastOutstanding) => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (candidates[a], candidates[b]);
                if b.outstanding() < a.outstanding() {
                    b
                } else {
                    a
                }
            }
        };
        Some(chosen.clone())
    }

    /// Ejects `target` for failing requests, unless the group already has as many ejected as
    /// it may; whether it was.
    pub fn eject(&self, target: &Target) -> bool {
        // One ejection at a time per group: the cap is counted and kept under it.
        let _one = lock(&self.ejecting);
        let now = Instant::now();
        let e = &self.config.ejection;
        let ejected = self.targets.iter().filter(|t| t.ejected(now)).count();
        let most = (self.targets.len() * e.max_percent as usize / 100).max(1);
        if ejected >= most || target.ejected(now) {
            return false;
        }
        let mut state = lock(&target.ejection);
        state.times += 1;
        let length = e.base_time.saturating_mul(state.times).min(e.max_time);
        state.until = Some(now + length);
        target.consecutive_5xx.store(0, Ordering::Relaxed);
        target.metrics.ejections.inc();
        tracing::warn!(group = %self.name, target = %target.addr, seconds = length.as_secs_f64(), "target ejected");
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(balance: Balance, n: usize) -> Group {
        let config = GroupConfig {
            balance,
            ..GroupConfig::default()
        };
        let targets = (0..n)
            .map(|i| {
                Arc::new(Target::new(
                    "g",
                    &format!("127.0.0.1:{}", 9000 + i),
                    &LbMetrics::default(),
                ))
            })
            .collect();
        Group::new("g", config, targets)
    }

    #[test]
    fn round_robin_takes_each_in_turn_and_skips_unhealthy_ones() {
        let g = group(Balance::RoundRobin, 3);
        let picks: Vec<String> = (0..6).map(|_| g.pick(&[]).unwrap().addr.clone()).collect();
        assert_eq!(picks[0..3], picks[3..6]);
        g.targets[1].record_check(Err("down".into()), 2, 1);
        assert!(!g.targets[1].healthy());
        for _ in 0..10 {
            assert_ne!(g.pick(&[]).unwrap().addr, g.targets[1].addr);
        }
    }

    #[test]
    fn health_changes_need_their_thresholds_in_a_row() {
        let t = Target::new("g", "127.0.0.1:1", &LbMetrics::default());
        assert_eq!(t.record_check(Err("x".into()), 2, 3), None);
        assert_eq!(t.record_check(Err("x".into()), 2, 3), None);
        assert_eq!(t.record_check(Err("x".into()), 2, 3), Some(false));
        assert_eq!(t.record_check(Ok(()), 2, 3), None);
        assert_eq!(t.record_check(Err("x".into()), 2, 3), None);
        assert_eq!(t.record_check(Ok(()), 2, 3), None);
        assert_eq!(t.record_check(Ok(()), 2, 3), Some(true));
    }

    #[test]
    fn with_no_healthy_target_every_target_is_tried_and_tried_ones_are_skipped() {
        let g = group(Balance::LeastOutstanding, 2);
        for t in &g.targets {
            t.record_check(Err("down".into()), 2, 1);
        }
        let first = g.pick(&[]).unwrap();
        let second = g.pick(std::slice::from_ref(&first)).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(g.pick(&[first, second]).is_none());
    }

    #[test]
    fn least_outstanding_prefers_the_idle_target_and_ejection_is_capped() {
        let g = group(Balance::LeastOutstanding, 2);
        let _busy = [g.targets[0].begin(), g.targets[0].begin()];
        for _ in 0..20 {
            assert_eq!(g.pick(&[]).unwrap().addr, g.targets[1].addr);
        }
        assert!(g.eject(&g.targets[1]));
        assert!(!g.eject(&g.targets[0]), "at most one of two at once");
        assert_eq!(g.pick(&[]).unwrap().addr, g.targets[0].addr);
    }
}
