//! Scaling policies: pure functions from a [`Snapshot`] of the queues and the fleet to a
//! [`Decision`] (actions and the reason for them). The loop, the simulator and the tests feed
//! them the same snapshots, so what a policy does is checked as a table of cases.

use std::time::Duration;

use nimbus_core::InstanceState;
use serde::Serialize;

/// One watched queue's depth.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueLoad {
    /// The queue.
    pub name: String,
    /// Messages ready to be received.
    pub visible: u64,
    /// Messages received and not yet deleted: work some instance holds a lease on.
    pub in_flight: u64,
    /// Messages sent with a delay that has not passed.
    pub delayed: u64,
}

/// One instance as a policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceView {
    /// The provider's id.
    pub id: String,
    /// Its state.
    pub state: InstanceState,
    /// How long since it was launched.
    pub age: Duration,
    /// How many tasks it is running, where the provider can tell (the simulator can; a
    /// machine in another cloud may not). A policy never scales in an instance that is busy,
    /// nor one whose load it cannot tell while any work is in flight.
    pub busy: Option<u32>,
    /// How long it has run no task, where the provider can tell.
    pub idle_for: Option<Duration>,
}

/// What a policy decides from: the queues, the fleet, and recent history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Every watched queue.
    pub queues: Vec<QueueLoad>,
    /// The deployment's instances that are not terminated.
    pub instances: Vec<InstanceView>,
    /// Since a message was last seen arriving (visible depth above zero or growing); `None`
    /// if none ever was.
    pub since_last_message: Option<Duration>,
    /// Since the last scaling action; `None` if there was none.
    pub since_last_action: Option<Duration>,
    /// Earlier backlogs (visible plus in flight, all queues), newest first, each with its age:
    /// what a stabilization window looks back on.
    pub history: Vec<(Duration, u64)>,
}

impl Snapshot {
    /// Visible messages in all watched queues.
    pub fn visible(&self) -> u64 {
        self.queues.iter().map(|q| q.visible).sum()
    }

    /// In-flight messages in all watched queues.
    pub fn in_flight(&self) -> u64 {
        self.queues.iter().map(|q| q.in_flight).sum()
    }

    /// Visible plus in flight: the work there is now.
    pub fn backlog(&self) -> u64 {
        self.visible() + self.in_flight()
    }

    fn in_state(&self, states: &'static [InstanceState]) -> impl Iterator<Item = &InstanceView> {
        self.instances
            .iter()
            .filter(move |i| states.contains(&i.state))
    }

    /// Pending or running: instances that work or soon will.
    pub fn active(&self) -> Vec<&InstanceView> {
        self.in_state(&[InstanceState::Pending, InstanceState::Running])
            .collect()
    }

    /// Stopped instances, the longest-lived first.
    pub fn stopped(&self) -> Vec<&InstanceView> {
        let mut stopped: Vec<_> = self.in_state(&[InstanceState::Stopped]).collect();
        stopped.sort_by(|a, b| b.age.cmp(&a.age).then_with(|| a.id.cmp(&b.id)));
        stopped
    }

    /// Running instances that may be scaled in, the youngest first (it has done the least and
    /// costs the least to lose): those known idle and, where nothing at all is in flight, those
    /// whose load is unknown. An instance that holds a lease is never among them, nor one still
    /// pending (EC2 cannot stop it yet).
    pub fn idle(&self) -> Vec<&InstanceView> {
        let nothing_in_flight = self.in_flight() == 0;
        let mut idle: Vec<_> = self
            .in_state(&[InstanceState::Running])
            .filter(|i| match i.busy {
                Some(n) => n == 0,
                None => nothing_in_flight,
            })
            .collect();
        idle.sort_by(|a, b| a.age.cmp(&b.age).then_with(|| a.id.cmp(&b.id)));
        idle
    }
}

/// One thing to do to the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", content = "instances", rename_all = "kebab-case")]
pub enum Action {
    /// Start these stopped instances.
    Start(Vec<String>),
    /// Launch this many new instances.
    Launch(u32),
    /// Stop these instances (they keep their disk and start again faster than a launch).
    Stop(Vec<String>),
    /// Terminate these instances.
    Terminate(Vec<String>),
}

/// What a policy decided, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The actions, in order; empty to do nothing.
    pub actions: Vec<Action>,
    /// Why, in words, with the figures it decided from.
    pub reason: String,
}

impl Decision {
    fn nothing(reason: impl Into<String>) -> Self {
        Self {
            actions: Vec::new(),
            reason: reason.into(),
        }
    }
}

/// A scaling policy.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// Its name, as `--policy` takes it.
    fn name(&self) -> &'static str;

    /// What to do now.
    fn decide(&self, snapshot: &Snapshot) -> Decision;

    /// How far back the snapshot's history must reach for this policy.
    fn history(&self) -> Duration {
        Duration::ZERO
    }

    /// After how long without work a worker of this policy stops itself (seed 001's app tier
    /// shuts itself down); `None` when the policy stops instances itself.
    fn self_stop(&self) -> Option<Duration> {
        None
    }
}

/// The least and the most active instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Never fewer active (warm) instances than this.
    pub min: u32,
    /// Never more than this.
    pub max: u32,
}

/// The ids of `instances`, at most `n`.
fn ids(instances: &[&InstanceView], n: usize) -> Vec<String> {
    instances.iter().take(n).map(|i| i.id.clone()).collect()
}

fn count(n: usize) -> u64 {
    n as u64
}

/// Seed 001's autoscaler, exactly as its report writes it (section 2.2): when the depth Q of
/// the queue exceeds the active instances A, start min(S, Q - A) of the S stopped ones and, while
/// S + A < cap, create min(Q, cap) - S - A new ones; once `idle` has passed since the last request
/// and A >= Q, terminate every stopped instance. Its workers stop themselves when their queue
/// stays empty for `worker_idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed001 {
    /// The most instances, stopped ones included (19 in the seed).
    pub cap: u32,
    /// How long after the last request stopped instances are terminated (2 min in the seed).
    pub idle: Duration,
    /// How long a worker finds its queue empty before it stops itself.
    pub worker_idle: Duration,
}

impl Default for Seed001 {
    fn default() -> Self {
        Self {
            cap: 19,
            idle: Duration::from_secs(120),
            worker_idle: Duration::from_secs(10),
        }
    }
}

impl Policy for Seed001 {
    fn name(&self) -> &'static str {
        "seed-001"
    }

    fn decide(&self, s: &Snapshot) -> Decision {
        let q = s.visible();
        let (active, stopped) = (s.active(), s.stopped());
        let (a, n_stopped) = (count(active.len()), count(stopped.len()));
        let cap = u64::from(self.cap);
        if q > a {
            let mut actions = Vec::new();
            let start = n_stopped.min(q - a);
            if start > 0 {
                actions.push(Action::Start(ids(&stopped, start as usize)));
            }
            let new = if n_stopped + a < cap {
                q.min(cap).saturating_sub(n_stopped + a)
            } else {
                0
            };
            if new > 0 {
                actions.push(Action::Launch(u32::try_from(new).unwrap_or(self.cap)));
            }
            return Decision {
                actions,
                reason: format!(
                    "depth {q} > active {a}: start {start} of {n_stopped} stopped, create {new} (cap {cap})"
                ),
            };
        }
        let quiet = s.since_last_message.is_none_or(|t| t > self.idle);
        if n_stopped > 0 && quiet {
            return Decision {
                actions: vec![Action::Terminate(ids(&stopped, stopped.len()))],
                reason: format!(
                    "active {a} >= depth {q} and no request for over {:?}: terminate the {n_stopped} stopped",
                    self.idle
                ),
            };
        }
        Decision::nothing(format!("active {a} >= depth {q}"))
    }

    fn self_stop(&self) -> Option<Duration> {
        Some(self.worker_idle)
    }
}

/// Seed 004's autoscaler: one instance more per interval while the depth exceeds the running
/// instances, up to `max`; one fewer per interval while the queue is empty (nothing visible and
/// nothing in flight, so no worker is busy). A stopped instance is started before one is
/// launched; the one removed is terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed004 {
    /// The least and most active instances (0 and 20 in the seed).
    pub bounds: Bounds,
}

impl Default for Seed004 {
    fn default() -> Self {
        Self {
            bounds: Bounds { min: 0, max: 20 },
        }
    }
}

impl Policy for Seed004 {
    fn name(&self) -> &'static str {
        "seed-004"
    }

    fn decide(&self, s: &Snapshot) -> Decision {
        let depth = s.visible();
        let active = s.active();
        let a = count(active.len());
        let Bounds { min, max } = self.bounds;
        if (depth > a && a < u64::from(max)) || a < u64::from(min) {
            let stopped = s.stopped();
            let action = match stopped.first() {
                Some(i) => Action::Start(vec![i.id.clone()]),
                None => Action::Launch(1),
            };
            return Decision {
                actions: vec![action],
                reason: format!("depth {depth} > running {a} (max {max}): one more"),
            };
        }
        if s.backlog() == 0 && a > u64::from(min) {
            if let Some(victim) = s.idle().first() {
                return Decision {
                    actions: vec![Action::Terminate(vec![victim.id.clone()])],
                    reason: format!("queue empty, {a} running (min {min}): one fewer"),
                };
            }
        }
        Decision::nothing(format!("depth {depth}, running {a}: steady"))
    }
}

/// The default policy: target tracking on the backlog per instance, counting in-flight work
/// (KEDA's SQS scaler, AWS's recommendation for queue-driven groups). Scale-out is immediate and
/// prefers stopped (warm) instances, as EC2's warm pools do. Scale-in takes only instances that
/// hold no lease: one known to have been idle for `idle` goes as soon as the need is lower
/// (seed 001's workers stop themselves the same way, but a policy decides here, so it never
/// overshoots); one whose load the provider cannot tell goes only when nothing is in flight and
/// the need has stayed lower over the whole stabilization `window` (a spike of approximate
/// depths does not flap the fleet). Instances are stopped, kept warm, and terminated only
/// beyond `warm` once nothing has come for `window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    /// Messages (visible plus in flight) one instance is meant to carry: its concurrency
    /// times the acceptable latency over the mean processing time (AWS's formula).
    pub per_instance: f64,
    /// The least and most active instances.
    pub bounds: Bounds,
    /// How long the need must stay lower before instances of unknown load are taken away.
    pub window: Duration,
    /// How long an instance known to be idle stays before it is taken away.
    pub idle: Duration,
    /// Stopped instances kept for a fast restart.
    pub warm: u32,
}

impl Default for Backlog {
    fn default() -> Self {
        Self {
            per_instance: 1.0,
            bounds: Bounds { min: 1, max: 8 },
            window: Duration::from_secs(60),
            idle: Duration::from_secs(5),
            warm: u32::MAX,
        }
    }
}

impl Backlog {
    fn need(&self, backlog: u64) -> u64 {
        (backlog as f64 / self.per_instance.max(f64::MIN_POSITIVE)).ceil() as u64
    }

    fn clamp(&self, n: u64) -> u64 {
        n.clamp(u64::from(self.bounds.min), u64::from(self.bounds.max))
    }

    fn scale_out(&self, s: &Snapshot, need: u64, backlog: u64) -> Decision {
        let (a, stopped) = (count(s.active().len()), s.stopped());
        let more = need - a;
        let start = more.min(count(stopped.len()));
        let mut actions = Vec::new();
        if start > 0 {
            actions.push(Action::Start(ids(&stopped, start as usize)));
        }
        if more > start {
            actions.push(Action::Launch(
                u32::try_from(more - start).unwrap_or(u32::MAX),
            ));
        }
        Decision {
            actions,
            reason: format!(
                "backlog {backlog} needs {need} at {} each, {a} active: start {start}, launch {}",
                self.per_instance,
                more - start
            ),
        }
    }

    /// Idle instances to stop: those known idle long enough, down to the need now; then those
    /// of unknown load, down to the highest need over the window.
    fn scale_in(&self, s: &Snapshot, need: u64) -> Vec<String> {
        let a = count(s.active().len());
        // Both kinds come from the idle instances, the youngest first.
        let (known, unknown): (Vec<&InstanceView>, Vec<&InstanceView>) =
            s.idle().into_iter().partition(|i| i.busy.is_some());
        let known: Vec<&InstanceView> = known
            .into_iter()
            .filter(|i| i.idle_for.is_some_and(|d| d >= self.idle))
            .collect();
        let mut stop = ids(&known, usize::try_from(a.saturating_sub(need)).unwrap_or(0));
        let seen_a_window = s.history.iter().any(|(age, _)| *age >= self.window);
        if seen_a_window {
            let recent = s
                .history
                .iter()
                .filter(|(age, _)| *age <= self.window)
                .map(|&(_, b)| self.need(b))
                .max()
                .unwrap_or(0);
            let floor = self.clamp(need.max(recent));
            let more = usize::try_from(a.saturating_sub(floor))
                .unwrap_or(0)
                .saturating_sub(stop.len());
            stop.extend(ids(&unknown, more));
        }
        stop
    }
}

impl Policy for Backlog {
    fn name(&self) -> &'static str {
        "backlog"
    }

    fn decide(&self, s: &Snapshot) -> Decision {
        let backlog = s.backlog();
        let need = self.clamp(self.need(backlog));
        let a = count(s.active().len());
        if need > a {
            return self.scale_out(s, need, backlog);
        }
        let stop = self.scale_in(s, need);
        if !stop.is_empty() {
            let n = stop.len();
            return Decision {
                actions: vec![Action::Stop(stop)],
                reason: format!(
                    "backlog {backlog} needs {need}, {a} active: stop {n} idle (none holds a lease)"
                ),
            };
        }
        let stopped = s.stopped();
        let quiet = s.since_last_message.is_none_or(|t| t > self.window);
        if quiet && stopped.len() > self.warm as usize {
            // The youngest stopped go first; the longest-lived stay warm.
            let extra: Vec<String> = stopped
                .iter()
                .skip(self.warm as usize)
                .map(|i| i.id.clone())
                .collect();
            let n = extra.len();
            return Decision {
                actions: vec![Action::Terminate(extra)],
                reason: format!(
                    "nothing for {:?}: terminate {n} stopped beyond the {} kept warm",
                    self.window, self.warm
                ),
            };
        }
        Decision::nothing(format!(
            "backlog {backlog}, need {need}, {a} active: steady"
        ))
    }

    fn history(&self) -> Duration {
        self.window
    }
}

/// The policies by name, with their defaults.
pub const NAMES: [&str; 3] = ["backlog", "seed-001", "seed-004"];

/// How a policy is tuned from the command line; `None` keeps its default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tuning {
    /// The least active instances (seed 001 has none: its workers stop themselves).
    pub min: Option<u32>,
    /// The most active instances (seed 001's cap, 19 by default; 20 for seed 004; 8 for
    /// backlog).
    pub max: Option<u32>,
    /// The idle period before scale-in (the backlog policy's window and idle time; seed 001's
    /// time before stopped instances are terminated).
    pub idle: Option<Duration>,
    /// Messages one instance carries (the backlog policy).
    pub per_instance: Option<f64>,
}

/// A policy by its name, tuned.
pub fn by_name(name: &str, tuning: &Tuning) -> Option<Box<dyn Policy>> {
    let bounds = |d: Bounds| Bounds {
        min: tuning.min.unwrap_or(d.min),
        max: tuning.max.unwrap_or(d.max),
    };
    Some(match name {
        "backlog" => {
            let d = Backlog::default();
            Box::new(Backlog {
                bounds: bounds(d.bounds),
                window: tuning.idle.unwrap_or(d.window),
                idle: tuning.idle.unwrap_or(d.idle),
                per_instance: tuning.per_instance.unwrap_or(d.per_instance),
                ..d
            })
        }
        "seed-001" => {
            let d = Seed001::default();
            Box::new(Seed001 {
                cap: tuning.max.unwrap_or(d.cap),
                idle: tuning.idle.unwrap_or(d.idle),
                ..d
            })
        }
        "seed-004" => Box::new(Seed004 {
            bounds: bounds(Seed004::default().bounds),
        }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceState::{Pending, Running, Stopped, Stopping};

    const S: Duration = Duration::from_secs(1);

    /// An instance in a case: state, age in s, and (tasks running, seconds idle) where known.
    type Case = (InstanceState, u64, Option<(u32, u64)>);

    /// A snapshot: depth (visible, in flight), instances (state, age in s, tasks running and
    /// seconds idle where known), seconds since the last message, and earlier backlogs (age in
    /// s, backlog).
    fn snap(
        visible: u64,
        in_flight: u64,
        instances: &[Case],
        since_message: Option<u64>,
        history: &[(u64, u64)],
    ) -> Snapshot {
        Snapshot {
            queues: vec![QueueLoad {
                name: "q".into(),
                visible,
                in_flight,
                delayed: 0,
            }],
            instances: instances
                .iter()
                .enumerate()
                .map(|(k, &(state, age, load))| InstanceView {
                    id: format!("i-{k}"),
                    state,
                    age: S * age as u32,
                    busy: load.map(|(n, _)| n),
                    idle_for: load.map(|(_, idle)| S * idle as u32),
                })
                .collect(),
            since_last_message: since_message.map(|s| S * s as u32),
            since_last_action: None,
            history: history.iter().map(|&(a, b)| (S * a as u32, b)).collect(),
        }
    }

    fn start(ids: &[&str]) -> Action {
        Action::Start(ids.iter().map(|s| s.to_string()).collect())
    }
    fn stop(ids: &[&str]) -> Action {
        Action::Stop(ids.iter().map(|s| s.to_string()).collect())
    }
    fn terminate(ids: &[&str]) -> Action {
        Action::Terminate(ids.iter().map(|s| s.to_string()).collect())
    }

    fn check(policy: &dyn Policy, cases: Vec<(&str, Snapshot, Vec<Action>)>) {
        for (what, snapshot, expected) in cases {
            let d = policy.decide(&snapshot);
            assert_eq!(
                d.actions,
                expected,
                "{}: {what} ({})",
                policy.name(),
                d.reason
            );
            assert!(!d.reason.is_empty(), "{what}: a decision says why");
        }
    }

    #[test]
    fn seed_001_as_its_report_writes_it() {
        let p = Seed001::default();
        let run = (Running, 60, None);
        let stopped = |age| (Stopped, age, None);
        check(
            &p,
            vec![
                (
                    "nothing to do on an empty queue",
                    snap(0, 0, &[], Some(5), &[]),
                    vec![],
                ),
                (
                    "10 requests, no instance: create 10",
                    snap(10, 0, &[], Some(0), &[]),
                    vec![Action::Launch(10)],
                ),
                (
                    "100 requests: create up to the cap of 19",
                    snap(100, 0, &[], Some(0), &[]),
                    vec![Action::Launch(19)],
                ),
                (
                    "Q - A = 3 with 2 stopped: start both (oldest first), create min(Q,19) - S - A",
                    snap(5, 0, &[run, run, stopped(10), stopped(99)], Some(0), &[]),
                    vec![start(&["i-3", "i-2"]), Action::Launch(1)],
                ),
                (
                    "start min(S, Q - A) stopped: Q - A = 1 of 3 stopped",
                    snap(
                        3,
                        0,
                        &[run, run, stopped(1), stopped(2), stopped(3)],
                        Some(0),
                        &[],
                    ),
                    vec![start(&["i-4"])],
                ),
                (
                    "S + A = 19: start, create nothing",
                    snap(
                        40,
                        0,
                        &[&[run; 17][..], &[stopped(5), stopped(6)][..]].concat(),
                        Some(0),
                        &[],
                    ),
                    vec![start(&["i-18", "i-17"])],
                ),
                (
                    "A >= Q, stopped ones, a request 119 s ago: keep them",
                    snap(1, 0, &[run, stopped(5)], Some(119), &[]),
                    vec![],
                ),
                (
                    "A >= Q and no request for over 2 min: terminate all stopped",
                    snap(0, 0, &[run, stopped(5), stopped(9)], Some(121), &[]),
                    vec![terminate(&["i-2", "i-1"])],
                ),
                (
                    "pending instances count as active",
                    snap(
                        2,
                        0,
                        &[(Pending, 1, None), (Pending, 1, None)],
                        Some(0),
                        &[],
                    ),
                    vec![],
                ),
            ],
        );
        assert_eq!(
            p.self_stop(),
            Some(Duration::from_secs(10)),
            "its workers stop themselves"
        );
    }

    #[test]
    fn seed_004_one_more_or_one_fewer_per_interval() {
        let p = Seed004::default();
        let run = (Running, 60, None);
        check(
            &p,
            vec![
                (
                    "depth 5 > running 0: one more",
                    snap(5, 0, &[], Some(0), &[]),
                    vec![Action::Launch(1)],
                ),
                (
                    "a stopped one is started first",
                    snap(5, 0, &[run, (Stopped, 3, None)], Some(0), &[]),
                    vec![start(&["i-1"])],
                ),
                (
                    "at 20 running, no more",
                    snap(50, 0, &[run; 20], Some(0), &[]),
                    vec![],
                ),
                (
                    "depth equal to running: steady",
                    snap(2, 3, &[run, run], Some(0), &[]),
                    vec![],
                ),
                (
                    "work in flight: nobody is removed",
                    snap(0, 1, &[run, run], Some(0), &[]),
                    vec![],
                ),
                (
                    "empty queue: one fewer, the youngest",
                    snap(
                        0,
                        0,
                        &[(Running, 90, None), (Running, 30, None)],
                        Some(9),
                        &[],
                    ),
                    vec![terminate(&["i-1"])],
                ),
            ],
        );
    }

    #[test]
    fn backlog_tracks_work_per_instance_and_protects_busy_workers() {
        let p = Backlog {
            per_instance: 2.0,
            bounds: Bounds { min: 1, max: 8 },
            window: Duration::from_secs(60),
            idle: Duration::from_secs(10),
            warm: 1,
        };
        let busy = |n| (Running, 100, Some((n, 0)));
        let idle = |secs| (Running, 100, Some((0, secs)));
        let unknown = |age| (Running, age, None);
        let window_seen = [(61, 0)];
        check(
            &p,
            vec![
                (
                    "below the minimum: one warm instance",
                    snap(0, 0, &[], None, &[]),
                    vec![Action::Launch(1)],
                ),
                (
                    "7 visible, 3 in flight, 1 active: 5 needed, stopped ones first",
                    snap(
                        7,
                        3,
                        &[busy(1), (Stopped, 50, None), (Stopped, 80, None)],
                        Some(0),
                        &[],
                    ),
                    vec![start(&["i-2", "i-1"]), Action::Launch(2)],
                ),
                (
                    "at most the maximum",
                    snap(100, 0, &[busy(1)], Some(0), &[]),
                    vec![Action::Launch(7)],
                ),
                (
                    "in-flight work counts: 4 leases keep 2 instances, nothing visible",
                    snap(0, 4, &[busy(2), busy(2)], Some(30), &window_seen),
                    vec![],
                ),
                (
                    "a worker that holds a lease is never scaled in, an idle one is",
                    snap(0, 3, &[busy(1), busy(1), busy(1), idle(12)], Some(5), &[]),
                    vec![stop(&["i-3"])],
                ),
                (
                    "idle, but not for long enough: kept",
                    snap(0, 0, &[busy(0), idle(9)], Some(5), &[]),
                    vec![],
                ),
                (
                    "idle long enough: stopped down to the minimum, the youngest first",
                    snap(
                        0,
                        0,
                        &[
                            (Running, 300, Some((0, 20))),
                            (Running, 30, Some((0, 20))),
                            (Running, 60, Some((0, 20))),
                        ],
                        Some(30),
                        &[],
                    ),
                    vec![stop(&["i-1", "i-2"])],
                ),
                (
                    "load unknown, need fell but not over the whole window: no scale-in",
                    snap(
                        0,
                        0,
                        &[unknown(9), unknown(8), unknown(7)],
                        Some(30),
                        &[(10, 6), (50, 6)],
                    ),
                    vec![],
                ),
                (
                    "load unknown: a spike down of an approximate depth does not flap",
                    snap(
                        0,
                        0,
                        &[unknown(9), unknown(8), unknown(7)],
                        Some(5),
                        &[(5, 6), (30, 5), (61, 6)],
                    ),
                    vec![],
                ),
                (
                    "load unknown while work is in flight: nobody is scaled in",
                    snap(0, 1, &[unknown(9), unknown(8)], Some(5), &window_seen),
                    vec![],
                ),
                (
                    "load unknown, nothing in flight over the window: scale in to the minimum",
                    snap(
                        0,
                        0,
                        &[unknown(9), unknown(8), unknown(7)],
                        Some(90),
                        &window_seen,
                    ),
                    vec![stop(&["i-2", "i-1"])],
                ),
                (
                    "quiet for the window: terminate stopped ones beyond the warm pool",
                    snap(
                        0,
                        0,
                        &[
                            busy(0),
                            (Stopped, 10, None),
                            (Stopped, 500, None),
                            (Stopping, 1, None),
                        ],
                        Some(90),
                        &window_seen,
                    ),
                    vec![terminate(&["i-1"])],
                ),
                (
                    "a spike of depth scales out at once",
                    snap(9, 0, &[busy(0)], Some(0), &[(5, 0), (61, 0)]),
                    vec![Action::Launch(4)],
                ),
            ],
        );
    }

    #[test]
    fn policies_by_name() {
        for name in NAMES {
            assert_eq!(by_name(name, &Tuning::default()).unwrap().name(), name);
        }
        assert!(by_name("nope", &Tuning::default()).is_none());
        let tuning = Tuning {
            min: Some(0),
            max: Some(4),
            ..Tuning::default()
        };
        let capped = by_name("seed-001", &tuning).unwrap();
        assert_eq!(
            capped.decide(&snap(10, 0, &[], Some(0), &[])).actions,
            vec![Action::Launch(4)]
        );
    }
}
