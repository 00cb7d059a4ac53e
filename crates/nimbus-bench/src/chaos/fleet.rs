//! The harness's processes: one `nimbus web` and N `nimbus worker`s, each a [`Supervised`] in a
//! process group of its own (so a kill takes its task processes too, as a machine dies), killed,
//! paused and restarted on purpose. Every disturbance is recorded against the incarnation it hit
//! (a worker's id names its incarnation), so the verdict can tell the documented window from a
//! bug, and every process's memory is sampled.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nimbus_scale::process::{ProcessSpec, Supervised};

/// What a member of the fleet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The web tier.
    Web,
    /// Worker number `i`.
    Worker(usize),
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Web => write!(f, "web"),
            Self::Worker(i) => write!(f, "worker-{i}"),
        }
    }
}

/// What happened to an incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// Killed with -9 by the harness.
    Killed,
    /// Stopped past its lease, then let go on.
    Paused,
    /// Ended by itself (a poison task, a crash).
    Died,
    /// Cut off from the engine with every other process: the disk under it was full.
    DiskFull,
}

/// The incarnation a disturbance of the whole platform names.
pub const EVERYONE: &str = "*";

/// A disturbance of one incarnation, from `from` to `to` (the same instant for a kill).
#[derive(Debug, Clone)]
pub struct Disturbance {
    /// The incarnation (`w1.3`: worker 1, third start; `web.2`).
    pub incarnation: String,
    /// What it was.
    pub hit: Hit,
    /// When it began.
    pub from: Instant,
    /// When it ended.
    pub to: Instant,
}

/// One memory sample.
#[derive(Debug, Clone)]
pub struct MemorySample {
    /// Seconds since the fleet started.
    pub at_s: f64,
    /// The member.
    pub role: String,
    /// Its incarnation.
    pub incarnation: String,
    /// Resident set size in KiB.
    pub rss_kib: u64,
}

struct Member {
    role: Role,
    generation: u32,
    process: Option<Supervised>,
    paused_since: Option<Instant>,
}

impl Member {
    fn incarnation(&self) -> String {
        match self.role {
            Role::Web => format!("web.{}", self.generation),
            Role::Worker(i) => format!("w{i}.{}", self.generation),
        }
    }
}

/// How to start the members.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The `nimbus` executable.
    pub exe: PathBuf,
    /// `--engine ...` and `--blobs ...`, before the subcommand.
    pub engine_args: Vec<String>,
    /// The web tier's port.
    pub port: u16,
    /// The workers' arguments after `worker` (queues, concurrency, visibility, ...).
    pub worker_args: Vec<String>,
    /// Workers.
    pub workers: usize,
    /// Where each member's standard error is appended (`<role>.log`).
    pub logs: PathBuf,
}

/// The running fleet.
pub struct Fleet {
    spec: FleetSpec,
    members: Vec<Member>,
    started: Instant,
    /// Every disturbance so far.
    pub disturbances: Vec<Disturbance>,
    /// Starts after the first.
    pub restarts: u64,
    /// Incarnations that ended by themselves, with how.
    pub deaths: Vec<(String, String)>,
    /// Memory samples.
    pub memory: Vec<MemorySample>,
}

impl Fleet {
    /// Starts the web tier and the workers.
    pub fn start(spec: FleetSpec) -> std::io::Result<Self> {
        let roles = std::iter::once(Role::Web).chain((0..spec.workers).map(Role::Worker));
        let mut fleet = Self {
            members: roles
                .map(|role| Member {
                    role,
                    generation: 0,
                    process: None,
                    paused_since: None,
                })
                .collect(),
            spec,
            started: Instant::now(),
            disturbances: Vec::new(),
            restarts: 0,
            deaths: Vec::new(),
            memory: Vec::new(),
        };
        for i in 0..fleet.members.len() {
            fleet.spawn(i)?;
        }
        fleet.restarts = 0;
        Ok(fleet)
    }

    /// The members' indexes: 0 is the web tier, 1.. the workers.
    pub fn workers(&self) -> std::ops::Range<usize> {
        1..self.members.len()
    }

    /// The member's role.
    pub fn role(&self, i: usize) -> Role {
        self.members[i].role
    }

    fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        let member = &mut self.members[i];
        member.generation += 1;
        let incarnation = member.incarnation();
        let mut args = self.spec.engine_args.clone();
        match member.role {
            Role::Web => args.extend(["web".into(), "--port".into(), self.spec.port.to_string()]),
            Role::Worker(_) => {
                args.push("worker".into());
                args.extend(self.spec.worker_args.iter().cloned());
                args.extend(["--worker-id".into(), incarnation]);
            }
        }
        let mut spec = ProcessSpec::new(&self.spec.exe, args);
        spec.log = Some(self.spec.logs.join(format!("{}.log", member.role)));
        member.process = Some(Supervised::spawn(&spec)?);
        self.restarts += 1;
        Ok(())
    }

    fn record(&mut self, i: usize, hit: Hit, from: Instant) {
        self.disturbances.push(Disturbance {
            incarnation: self.members[i].incarnation(),
            hit,
            from,
            to: Instant::now(),
        });
    }

    /// Notes that every process was cut off from the engine since `from` (a full disk).
    pub fn record_everyone(&mut self, hit: Hit, from: Instant) {
        self.disturbances.push(Disturbance {
            incarnation: EVERYONE.to_string(),
            hit,
            from,
            to: Instant::now(),
        });
    }

    /// Kills member `i` with -9 (its whole process group) and reaps it; whether it was running.
    pub fn kill(&mut self, i: usize) -> bool {
        let Some(mut p) = self.members[i].process.take() else {
            return false;
        };
        p.kill_now();
        self.record(i, Hit::Killed, Instant::now());
        true
    }

    /// Stops member `i`'s whole group (SIGSTOP); whether it was running.
    pub fn pause(&mut self, i: usize) -> bool {
        let m = &mut self.members[i];
        let paused = m.process.as_ref().is_some_and(Supervised::pause);
        if paused {
            m.paused_since = Some(Instant::now());
        }
        paused
    }

    /// Lets a paused member go on (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        let Some(from) = self.members[i].paused_since.take() else {
            return;
        };
        if let Some(p) = &self.members[i].process {
            p.resume();
        }
        self.record(i, Hit::Paused, from);
    }

    /// Starts member `i` again unless it runs.
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        if self.members[i].process.is_none() {
            self.spawn(i)?;
        }
        Ok(())
    }

    /// Notes the members that ended by themselves and starts them again; their names.
    pub fn revive(&mut self) -> std::io::Result<Vec<String>> {
        let mut revived = Vec::new();
        for i in 0..self.members.len() {
            let Some(p) = &mut self.members[i].process else {
                continue;
            };
            if let Some(status) = p.exit_status() {
                // Its task processes may outlive it: the group goes with it, as when it is killed.
                p.kill_now();
                self.members[i].process = None;
                let incarnation = self.members[i].incarnation();
                self.deaths.push((incarnation.clone(), status.to_string()));
                self.record(i, Hit::Died, Instant::now());
                self.spawn(i)?;
                revived.push(incarnation);
            }
        }
        Ok(revived)
    }

    /// Samples every running member's resident memory.
    pub fn sample_memory(&mut self) {
        let at_s = self.started.elapsed().as_secs_f64();
        for m in &self.members {
            let Some(p) = &m.process else { continue };
            if let Some(rss_kib) = rss_kib(p.pid()) {
                self.memory.push(MemorySample {
                    at_s,
                    role: m.role.to_string(),
                    incarnation: m.incarnation(),
                    rss_kib,
                });
            }
        }
    }

    /// Stops every member: SIGTERM, then the group killed after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for m in &mut self.members {
            if let Some(p) = &mut m.process {
                p.ask_to_stop();
            }
        }
        for m in &mut self.members {
            if let Some(mut p) = m.process.take() {
                p.stop_by(deadline);
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut p) = m.process.take() {
                p.resume();
                p.kill_now();
            }
        }
    }
}

/// A process's resident set size from /proc, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
