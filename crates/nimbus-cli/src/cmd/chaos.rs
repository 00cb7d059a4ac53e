//! `nimbus bench chaos`: the chaos harness (nimbus_bench::chaos) on a fresh embedded store of its
//! own (on a size-limited tmpfs when run as root, for disk-full faults), or on an AWS deployment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use nimbus_bench::chaos::{self, disk::Tmpfs, workload::Rates, ChaosOptions, Setup};

use crate::args::{ChaosArgs, EngineArgs};
use crate::engine_url::{self, EngineUrl};

/// The photos classified when no --image is given (python3-skimage's samples).
const PHOTOS: &str = "/usr/lib/python3/dist-packages/skimage/data";
const DEFAULT_IMAGES: [&str; 3] = ["chelsea.png", "coffee.png", "camera.png"];

pub async fn run(engine_args: &EngineArgs, args: ChaosArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.workers >= 1 && args.concurrency >= 1 && args.max_receives >= 1,
        "--workers, --concurrency and --max-receives must be at least 1"
    );
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..) >> 12);
    let duration = Duration::from_secs(args.minutes.map_or(args.seconds, |m| m * 60));
    let (dir, keep) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            (
                tempfile::Builder::new().prefix("chaos-").tempdir_in(d)?,
                true,
            )
        }
        None => (
            tempfile::Builder::new().prefix("nimbus-chaos-").tempdir()?,
            false,
        ),
    };
    println!(
        "chaos run, seed {seed}: replay with `nimbus bench chaos --seed {seed}` and the same flags"
    );
    println!("its files: {}", dir.path().display());
    let aws = matches!(
        EngineUrl::parse(&engine_args.engine)?,
        EngineUrl::Aws { .. }
    );
    let (engine_args, tmpfs) = if aws {
        (engine_args.clone(), None)
    } else {
        embedded_store(dir.path(), &args)?
    };
    let engine = engine_url::open(&engine_args).await?;
    let (images, worker_args) = classify_setup(&args);
    let mut child_args = vec!["--engine".to_string(), engine_args.engine.clone()];
    if let Some(blobs) = &engine_args.blobs {
        child_args.extend(["--blobs".to_string(), blobs.clone()]);
    }
    let setup = Setup {
        exe: std::env::current_exe().context("cannot find the nimbus executable")?,
        engine_args: child_args,
        engine,
        dir: dir.path().to_path_buf(),
        disk: tmpfs.as_ref().map(|t| t.dir().to_path_buf()),
        worker_args,
        images,
    };
    let options = ChaosOptions {
        seed,
        duration,
        workers: args.workers,
        concurrency: args.concurrency,
        visibility: args.visibility,
        fault_every: args.fault_every,
        rates: Rates {
            session_every: args.session_every,
            session_tasks: args.session_tasks,
            atoms_every: args.atoms_every,
            classify_every: args.classify_every,
        },
        poison: args.poison,
        max_receives: args.max_receives,
        window: args.window,
        drain: args.drain,
    };
    // Ctrl-C drops the run, and with it the fleet: every process it started is killed.
    let report = tokio::select! {
        report = chaos::run(setup, options) => report?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted: the processes of the run were stopped"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if args.markdown {
        println!("{}", report.markdown_row());
    }
    drop(tmpfs);
    if !report.ok() {
        let kept = dir.keep();
        anyhow::bail!(
            "the chaos run with seed {seed} found a broken promise (see the FAILED checks); its logs are in {}",
            kept.display()
        );
    }
    if keep {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
    Ok(())
}

/// A fresh store under `dir/data`: on a tmpfs of --disk-mib when disk-full faults are on (as
/// root), else a plain directory.
fn embedded_store(dir: &Path, args: &ChaosArgs) -> anyhow::Result<(EngineArgs, Option<Tmpfs>)> {
    let data = dir.join("data");
    let tmpfs = if args.no_disk_full {
        None
    } else {
        match Tmpfs::mount(&data, args.disk_mib << 20) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!(
                    "no disk-full faults: cannot mount a tmpfs on {} ({e}; it needs root)",
                    data.display()
                );
                None
            }
        }
    };
    std::fs::create_dir_all(&data)?;
    let engine = EngineArgs {
        engine: format!("sqlite://{}", data.join("nimbus.db").display()),
        blobs: None,
    };
    Ok((engine, tmpfs))
}

/// The images and the workers' model arguments, or none (with why) when classify is off.
fn classify_setup(args: &ChaosArgs) -> (Vec<(String, Bytes)>, Vec<String>) {
    if args.no_classify || args.classify_every.is_zero() {
        return (Vec::new(), Vec::new());
    }
    let paths: Vec<PathBuf> = if args.images.is_empty() {
        DEFAULT_IMAGES
            .iter()
            .map(|n| Path::new(PHOTOS).join(n))
            .collect()
    } else {
        args.images.clone()
    };
    let images: Vec<(String, Bytes)> = paths
        .iter()
        .filter_map(|p| {
            let bytes = std::fs::read(p).ok()?;
            let name = p.file_name()?.to_string_lossy().into_owned();
            Some((name, Bytes::from(bytes)))
        })
        .collect();
    let model = crate::cmd::up::model_for_workers(&args.model);
    match (images.is_empty(), model) {
        (false, Ok(model_args)) => (images, model_args),
        (true, _) => {
            eprintln!("no classify requests: none of {paths:?} could be read");
            (Vec::new(), Vec::new())
        }
        (false, Err(why)) => {
            eprintln!("no classify requests: {why}");
            (Vec::new(), Vec::new())
        }
    }
}
