//! The `local` compute provider: an instance is a `nimbus worker` process on this machine.
//! Launch spawns one in a slot of its own; stop ends it gracefully and keeps the slot as
//! stopped; start spawns it again; terminate ends it and forgets the slot. A process that ends
//! on its own (a crash, `kill -9`, a worker that stopped itself when idle) shows as stopped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use nimbus_core::{ComputeProvider, Error, Instance, InstanceState, LaunchSpec, Result};

use crate::process::{ProcessSpec, Supervised};

#[derive(Debug)]
struct Slot {
    spec: ProcessSpec,
    process: Option<Supervised>,
    launched_at: SystemTime,
}

impl Slot {
    fn state(&mut self, id: &str, grace: Duration) -> InstanceState {
        match &mut self.process {
            Some(p) => {
                p.enforce(grace);
                if p.stopping() {
                    InstanceState::Stopping
                } else if p.running() {
                    InstanceState::Running
                } else {
                    let status = p.exit_status();
                    if p.stop_was_asked() {
                        tracing::info!(instance = id, ?status, "worker process stopped");
                    } else {
                        tracing::warn!(instance = id, ?status, "worker process ended on its own");
                    }
                    self.process = None;
                    InstanceState::Stopped
                }
            }
            None => InstanceState::Stopped,
        }
    }
}

/// Worker processes of one deployment on this machine.
#[derive(Debug)]
pub struct LocalProvider {
    exe: PathBuf,
    /// Prefixed to slot ids, which are also the workers' ids: unique across hosts.
    prefix: String,
    grace: Duration,
    log_dir: Option<PathBuf>,
    slots: Mutex<BTreeMap<String, Slot>>,
    /// Processes of terminated slots, until they have ended.
    leaving: Mutex<Vec<Supervised>>,
    next: std::sync::atomic::AtomicU64,
}

impl LocalProvider {
    /// Workers run from the `nimbus` executable `exe`, their ids `PREFIX-N`; a stopped worker
    /// that has not exited `grace` after SIGTERM is killed.
    pub fn new(exe: impl Into<PathBuf>, prefix: impl Into<String>, grace: Duration) -> Self {
        Self {
            exe: exe.into(),
            prefix: prefix.into(),
            grace,
            log_dir: None,
            slots: Mutex::new(BTreeMap::new()),
            leaving: Mutex::new(Vec::new()),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Appends each worker's standard error to `DIR/ID.log`.
    pub fn with_logs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// How a launch of `spec` runs as a process with worker id `id`.
    fn render(&self, spec: &LaunchSpec, id: &str) -> ProcessSpec {
        let mut args = vec!["--engine".to_string(), spec.engine.clone()];
        if let Some(blobs) = &spec.blobs {
            args.extend(["--blobs".to_string(), blobs.clone()]);
        }
        args.extend(spec.worker_args());
        args.extend(["--worker-id".to_string(), id.to_string()]);
        ProcessSpec {
            exe: self.exe.clone(),
            args,
            env: Vec::new(),
            log: self.log_dir.as_ref().map(|d| d.join(format!("{id}.log"))),
        }
    }

    /// The process id of instance `id`'s worker, while it runs.
    pub fn pid(&self, id: &str) -> Option<u32> {
        let mut slots = lock(&self.slots);
        let process = slots.get_mut(id)?.process.as_mut()?;
        process.running().then(|| process.pid())
    }

    /// Stops every worker (gracefully, then killed after the grace period) and forgets them:
    /// what an autoscaler does with its local fleet when it stops.
    pub fn shutdown(&self) {
        let mut processes: Vec<Supervised> = lock(&self.slots)
            .values_mut()
            .filter_map(|s| s.process.take())
            .collect();
        processes.append(&mut lock(&self.leaving));
        for p in &mut processes {
            p.ask_to_stop();
        }
        let deadline = std::time::Instant::now() + self.grace;
        for p in &mut processes {
            p.stop_by(deadline);
        }
        lock(&self.slots).clear();
    }

    fn each<'a>(
        &self,
        slots: &'a mut BTreeMap<String, Slot>,
        ids: &[String],
    ) -> Result<Vec<(&'a String, &'a mut Slot)>> {
        if let Some(missing) = ids.iter().find(|id| !slots.contains_key(*id)) {
            return Err(Error::not_found(format!("no local instance `{missing}`")));
        }
        Ok(slots
            .iter_mut()
            .filter(|(id, _)| ids.contains(id))
            .collect())
    }
}

impl Drop for LocalProvider {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn spawn_error(e: std::io::Error, spec: &ProcessSpec) -> Error {
    Error::new(
        nimbus_core::ErrorKind::Unavailable,
        format!("cannot start {}: {e}", spec.exe.display()),
    )
}

#[async_trait]
impl ComputeProvider for LocalProvider {
    async fn list(&self) -> Result<Vec<Instance>> {
        lock(&self.leaving).retain_mut(|p| {
            let running = p.running();
            p.enforce(self.grace);
            running
        });
        let mut slots = lock(&self.slots);
        Ok(slots
            .iter_mut()
            .map(|(id, slot)| Instance {
                id: id.clone(),
                state: slot.state(id, self.grace),
                launched_at: Some(slot.launched_at),
            })
            .collect())
    }

    async fn launch(&self, spec: &LaunchSpec, count: u32) -> Result<Vec<String>> {
        if count == 0 {
            return Err(Error::invalid("cannot launch 0 instances; 1 or more"));
        }
        let mut ids = Vec::new();
        for _ in 0..count {
            let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let id = format!("{}-{n}", self.prefix);
            let process_spec = self.render(spec, &id);
            let process =
                Supervised::spawn(&process_spec).map_err(|e| spawn_error(e, &process_spec))?;
            tracing::info!(instance = %id, pid = process.pid(), "worker process launched");
            lock(&self.slots).insert(
                id.clone(),
                Slot {
                    spec: process_spec,
                    process: Some(process),
                    launched_at: SystemTime::now(),
                },
            );
            ids.push(id);
        }
        Ok(ids)
    }

    async fn start(&self, ids: &[String]) -> Result<()> {
        let mut slots = lock(&self.slots);
        for (id, slot) in self.each(&mut slots, ids)? {
            if slot.state(id, self.grace) == InstanceState::Stopped {
                let process =
                    Supervised::spawn(&slot.spec).map_err(|e| spawn_error(e, &slot.spec))?;
                slot.process = Some(process);
            }
        }
        Ok(())
    }

    async fn stop(&self, ids: &[String]) -> Result<()> {
        let mut slots = lock(&self.slots);
        for (_, slot) in self.each(&mut slots, ids)? {
            if let Some(p) = &mut slot.process {
                p.ask_to_stop();
            }
        }
        Ok(())
    }

    async fn terminate(&self, ids: &[String]) -> Result<()> {
        let mut slots = lock(&self.slots);
        self.each(&mut slots, ids)?;
        let mut leaving = lock(&self.leaving);
        for id in ids {
            if let Some(mut p) = slots.remove(id).and_then(|s| s.process) {
                p.ask_to_stop();
                leaving.push(p);
            }
        }
        Ok(())
    }
}
