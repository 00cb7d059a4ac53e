//! The simulator: replays a trace of requests (arrival and service times) against a policy with
//! a model of the fleet (a launch is slower than a start from stopped; an instance is billed
//! while pending or running) and reports completion times, instance-seconds and actions.
//! Time moves in fixed steps; the policy decides every `interval`, as the loop does.

use std::collections::VecDeque;
use std::time::Duration;

use nimbus_core::InstanceState;

use crate::policy::{Action, InstanceView, Policy, QueueLoad, Snapshot};

/// One request: when it arrives and how long it takes an instance to serve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// Arrival, from the trace's start.
    pub arrival: Duration,
    /// Service time on one instance.
    pub service: Duration,
}

/// The fleet's timings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    /// From a launch to a working instance.
    pub launch: Duration,
    /// From a start (of a stopped instance) to a working one.
    pub start: Duration,
    /// How often the policy decides.
    pub interval: Duration,
    /// Requests one instance serves at once.
    pub concurrency: u32,
    /// The simulation's time step.
    pub step: Duration,
    /// The simulation stops this long after the last arrival even if work remains.
    pub horizon: Duration,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            launch: Duration::from_secs(30),
            start: Duration::from_secs(10),
            interval: Duration::from_secs(5),
            concurrency: 1,
            step: Duration::from_millis(100),
            horizon: Duration::from_secs(3600),
        }
    }
}

/// What one policy did on one trace.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outcome {
    /// The policy.
    pub policy: String,
    /// Requests served.
    pub served: usize,
    /// Requests in the trace.
    pub requests: usize,
    /// Completion time (arrival to end of service), median.
    pub p50: Duration,
    /// Completion time, 99th percentile.
    pub p99: Duration,
    /// When the last request was served, from the trace's start.
    pub last: Duration,
    /// Seconds of pending or running instances, summed.
    pub instance_seconds: f64,
    /// Instances launched, started, stopped and terminated.
    pub launched: u32,
    /// Stopped instances started again.
    pub started: u32,
    /// Instances stopped.
    pub stopped: u32,
    /// Instances terminated.
    pub terminated: u32,
    /// The most active instances at once.
    pub peak: usize,
    /// Stops or terminations of instances that were serving, refused by the simulator (they
    /// would have lost work): a policy must have none.
    pub refused: u32,
    /// Active instances over time: (seconds, count), one sample per interval.
    pub fleet: Vec<(f64, usize)>,
}

#[derive(Debug)]
struct Sim {
    id: String,
    state: InstanceState,
    born: Duration,
    ready_at: Duration,
    idle_since: Duration,
    serving: Vec<Duration>,
}

impl Sim {
    fn working(&self, now: Duration) -> bool {
        self.state == InstanceState::Running && now >= self.ready_at
    }
}

/// Replays `trace` (sorted by arrival) against `policy` under `model`.
pub fn run(trace: &[Request], policy: &dyn Policy, model: &Model) -> Outcome {
    let step = model.step.max(Duration::from_millis(1));
    let mut pending: VecDeque<Request> = trace.iter().copied().collect();
    let mut waiting: VecDeque<Request> = VecDeque::new();
    let mut fleet: Vec<Sim> = Vec::new();
    let mut done: Vec<Duration> = Vec::new();
    let mut history: VecDeque<(Duration, u64)> = VecDeque::new();
    let mut out = Outcome {
        policy: policy.name().to_string(),
        served: 0,
        requests: trace.len(),
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        last: Duration::ZERO,
        instance_seconds: 0.0,
        launched: 0,
        started: 0,
        stopped: 0,
        terminated: 0,
        peak: 0,
        refused: 0,
        fleet: Vec::new(),
    };
    let (mut last_arrival, mut last_action) = (None::<Duration>, None::<Duration>);
    let end_of_trace = trace.last().map_or(Duration::ZERO, |r| r.arrival);
    let mut next_decision = Duration::ZERO;
    let mut now = Duration::ZERO;
    loop {
        while pending.front().is_some_and(|r| r.arrival <= now) {
            let r = pending.pop_front().expect("a front");
            last_arrival = Some(now);
            waiting.push_back(r);
        }
        serve(
            &mut fleet,
            &mut waiting,
            &mut done,
            &mut out,
            now,
            model,
            policy,
        );
        let work_left = !pending.is_empty()
            || !waiting.is_empty()
            || fleet.iter().any(|i| !i.serving.is_empty());
        // Done once the work is and the fleet is at rest: none active, or none changed for
        // longer than the policy looks back (it keeps a warm minimum).
        let at_rest = !fleet.iter().any(is_active)
            || last_action.is_none_or(|t| {
                now.saturating_sub(t.max(out.last)) > policy.history() + model.interval * 3
            });
        if (!work_left && at_rest) || now > end_of_trace + model.horizon {
            break;
        }
        if now >= next_decision {
            next_decision = now + model.interval;
            let snapshot = snapshot(&fleet, &waiting, now, last_arrival, last_action, &history);
            let decision = policy.decide(&snapshot);
            if !decision.actions.is_empty() {
                last_action = Some(now);
            }
            apply(&mut fleet, &decision.actions, now, model, &mut out);
            history.push_front((now, snapshot.backlog()));
            while history
                .back()
                .is_some_and(|(t, _)| now - *t > policy.history() + model.interval * 2)
            {
                history.pop_back();
            }
            let active = fleet.iter().filter(|i| is_active(i)).count();
            out.peak = out.peak.max(active);
            out.fleet.push((now.as_secs_f64(), active));
        }
        let billed = fleet.iter().filter(|i| is_active(i)).count();
        out.instance_seconds += billed as f64 * step.as_secs_f64();
        now += step;
    }
    let active = fleet.iter().filter(|i| is_active(i)).count();
    out.fleet.push((now.as_secs_f64(), active));
    done.sort();
    out.served = done.len();
    out.p50 = percentile(&done, 0.50);
    out.p99 = percentile(&done, 0.99);
    out
}

fn is_active(i: &Sim) -> bool {
    matches!(i.state, InstanceState::Pending | InstanceState::Running)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Ends finished requests, hands waiting ones to free working instances, and stops the
/// instances of a self-stopping policy that found nothing to do for long enough.
fn serve(
    fleet: &mut [Sim],
    waiting: &mut VecDeque<Request>,
    done: &mut Vec<Duration>,
    out: &mut Outcome,
    now: Duration,
    model: &Model,
    policy: &dyn Policy,
) {
    for i in fleet.iter_mut() {
        if i.state == InstanceState::Pending && now >= i.ready_at {
            i.state = InstanceState::Running;
            i.idle_since = now;
        }
        if !i.working(now) {
            continue;
        }
        let before = i.serving.len();
        i.serving.retain(|&end| end > now);
        if i.serving.len() < before {
            i.idle_since = now;
        }
    }
    // Free slots take the oldest requests, the instances in id order (as receives race).
    for i in fleet.iter_mut().filter(|i| i.working(now)) {
        while i.serving.len() < model.concurrency as usize {
            let Some(r) = waiting.pop_front() else { break };
            let end = now + r.service;
            i.serving.push(end);
            done.push(end - r.arrival);
            out.last = out.last.max(end);
        }
        if let Some(after) = policy.self_stop() {
            if i.serving.is_empty() && waiting.is_empty() && now - i.idle_since >= after {
                i.state = InstanceState::Stopped;
                out.stopped += 1;
            }
        }
    }
}

fn snapshot(
    fleet: &[Sim],
    waiting: &VecDeque<Request>,
    now: Duration,
    last_arrival: Option<Duration>,
    last_action: Option<Duration>,
    history: &VecDeque<(Duration, u64)>,
) -> Snapshot {
    let in_flight: usize = fleet.iter().map(|i| i.serving.len()).sum();
    Snapshot {
        queues: vec![QueueLoad {
            name: "requests".to_string(),
            visible: waiting.len() as u64,
            in_flight: in_flight as u64,
            delayed: 0,
        }],
        instances: fleet
            .iter()
            .filter(|i| i.state != InstanceState::Terminated)
            .map(|i| InstanceView {
                id: i.id.clone(),
                state: i.state,
                age: now - i.born,
                busy: Some(i.serving.len() as u32),
                idle_for: Some(if i.serving.is_empty() && i.working(now) {
                    now - i.idle_since
                } else {
                    Duration::ZERO
                }),
            })
            .collect(),
        since_last_message: last_arrival.map(|t| now - t),
        since_last_action: last_action.map(|t| now - t),
        history: history.iter().map(|&(t, b)| (now - t, b)).collect(),
    }
}

fn apply(
    fleet: &mut Vec<Sim>,
    actions: &[Action],
    now: Duration,
    model: &Model,
    out: &mut Outcome,
) {
    let find = |fleet: &mut Vec<Sim>, id: &str| fleet.iter_mut().position(|i| i.id == id);
    for action in actions {
        match action {
            Action::Launch(n) => {
                for _ in 0..*n {
                    let id = format!("i-{:04}", fleet.len());
                    fleet.push(Sim {
                        id,
                        state: InstanceState::Pending,
                        born: now,
                        ready_at: now + model.launch,
                        idle_since: now,
                        serving: Vec::new(),
                    });
                    out.launched += 1;
                }
            }
            Action::Start(ids) => {
                for id in ids {
                    if let Some(k) = find(fleet, id) {
                        if fleet[k].state == InstanceState::Stopped {
                            fleet[k].state = InstanceState::Pending;
                            fleet[k].ready_at = now + model.start;
                            out.started += 1;
                        }
                    }
                }
            }
            Action::Stop(ids) | Action::Terminate(ids) => {
                let terminate = matches!(action, Action::Terminate(_));
                for id in ids {
                    let Some(k) = find(fleet, id) else { continue };
                    let i = &mut fleet[k];
                    // An instance stopped while serving would lose its work: the simulator
                    // refuses, so a policy that tries shows as requests never served.
                    if !i.serving.is_empty() {
                        out.refused += 1;
                        continue;
                    }
                    if terminate {
                        i.state = InstanceState::Terminated;
                        out.terminated += 1;
                    } else if i.state != InstanceState::Stopped {
                        i.state = InstanceState::Stopped;
                        out.stopped += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{by_name, Bounds, Tuning, NAMES};

    fn tuned(bounds: Bounds) -> Tuning {
        Tuning {
            min: Some(bounds.min),
            max: Some(bounds.max),
            ..Tuning::default()
        }
    }
    use crate::trace;

    const SERVICE: Duration = Duration::from_secs(2);

    fn all(trace: &[Request], bounds: Bounds) -> Vec<Outcome> {
        NAMES
            .iter()
            .map(|name| {
                run(
                    trace,
                    &*by_name(name, &tuned(bounds)).unwrap(),
                    &Model::default(),
                )
            })
            .collect()
    }

    #[test]
    fn every_policy_serves_every_request_of_every_trace_and_never_stops_a_busy_instance() {
        for (name, trace) in trace::generated(SERVICE, 3) {
            for o in all(&trace, Bounds { min: 0, max: 19 }) {
                assert_eq!(o.served, o.requests, "{name}: {o:?}");
                assert_eq!(o.refused, 0, "{name}: {} stopped a busy instance", o.policy);
                assert!(o.peak <= 19, "{name}: {} over its maximum", o.policy);
            }
        }
    }

    #[test]
    fn seed_001_grows_to_its_cap_on_a_burst_of_100_and_stops_itself() {
        let trace = trace::burst(100, SERVICE, 1);
        let p = by_name("seed-001", &Tuning::default()).unwrap();
        let o = run(&trace, &*p, &Model::default());
        assert_eq!((o.peak, o.launched), (19, 19), "{o:?}");
        assert_eq!(
            o.stopped, 19,
            "every worker stopped itself once the queue was empty"
        );
        // 100 requests of about 2 s on 19 instances after a 30 s launch.
        assert!(
            o.last > Duration::from_secs(30) && o.last < Duration::from_secs(60),
            "{o:?}"
        );
    }

    #[test]
    fn a_warm_pool_starts_faster_than_a_launch() {
        let trace = trace::spikes(2, 10, Duration::from_secs(300), SERVICE, 1);
        let p = by_name("backlog", &tuned(Bounds { min: 0, max: 10 })).unwrap();
        let o = run(&trace, &*p, &Model::default());
        assert!(
            o.started > 0,
            "the second spike starts stopped instances: {o:?}"
        );
        assert!(o.launched <= 10, "and launches none anew: {o:?}");
        let first_spike = 30.0 + 2.0 * 3.0; // a launch, then up to three services in a row
        assert!(o.p99.as_secs_f64() < first_spike + 5.0, "{o:?}");
    }

    #[test]
    fn instance_seconds_count_pending_and_running_time() {
        // One request of 2 s, one instance launched in 30 s: at least 32 instance-seconds.
        let trace = trace::burst(1, SERVICE, 1);
        let p = by_name("seed-004", &Tuning::default()).unwrap();
        let o = run(&trace, &*p, &Model::default());
        assert_eq!(o.served, 1);
        assert!(o.instance_seconds >= 32.0 - 0.2, "{o:?}");
        assert!(o.last >= Duration::from_secs(31), "{o:?}");
    }
}
