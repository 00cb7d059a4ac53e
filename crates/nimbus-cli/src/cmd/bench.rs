//! `nimbus bench ...`: runs a benchmark and prints its figures as Markdown tables.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nimbus_bench::engine::{EngineBench, SCENARIOS};
use nimbus_bench::tasks::{
    in_process, local_pool, prepare, submit_and_wait, WorkerProcesses, Workload,
};
use nimbus_bench::{median, raw_sqlite};
use nimbus_sqlite::{SqliteEngine, SqliteOptions};

use crate::args::{BenchCmd, BenchHttpArgs, EngineArgs};

pub async fn run(engine_args: &EngineArgs, cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Http(a) => http(a).await,
        BenchCmd::Chaos(a) => crate::cmd::chaos::run(engine_args, a).await,
        BenchCmd::Engine {
            messages,
            payload,
            runs,
            no_baseline,
            moto,
        } => {
            anyhow::ensure!(
                messages > 0 && runs > 0 && moto != Some(0),
                "--messages, --runs and --moto must be at least 1"
            );
            let bench = EngineBench {
                messages,
                payload,
                runs,
            };
            engine(bench.clone(), !no_baseline).await?;
            match moto {
                Some(messages) => moto_engine(EngineBench { messages, ..bench }).await,
                None => Ok(()),
            }
        }
        BenchCmd::Atoms {
            n,
            m,
            reference,
            runs,
            gpu,
            gpu_reference,
            no_cpu,
        } => {
            anyhow::ensure!(
                (1..=4096).contains(&n) && m > 0 && runs > 0,
                "--n must be 1 to 4096 (the reference's row limit), --m and --runs at least 1"
            );
            if !no_cpu {
                atoms(n, m, reference.as_deref(), runs).await?;
            }
            if gpu {
                gpu_atoms(n, m, gpu_reference.as_deref(), runs)?;
            }
            Ok(())
        }
        BenchCmd::Model { model, image, runs } => model_bench(&model, &image, runs).await,
        BenchCmd::Classify {
            url,
            images,
            requests,
            concurrency,
            expect,
            wait,
        } => classify(url, &images, requests, concurrency, expect.as_deref(), wait).await,
        BenchCmd::Jobs { jobs, runs } => jobs_bench(jobs, runs).await,
        BenchCmd::Video {
            images,
            runs,
            width,
            height,
            ffmpeg,
        } => video(images, runs, width, height, ffmpeg).await,
        BenchCmd::Tasks {
            slots,
            scale,
            workers,
            tasks: count,
            concurrency,
            no_efficiency,
            celery,
            free_slot,
        } => {
            anyhow::ensure!(
                scale > 0.0 && count > 0,
                "--scale and --tasks must be positive"
            );
            anyhow::ensure!(
                slots.iter().chain(&workers).all(|&n| n > 0),
                "slot and worker counts must be at least 1"
            );
            if !no_efficiency {
                efficiency(&slots, scale).await?;
            }
            throughput(&workers, count, concurrency, celery, &free_slot).await
        }
    }
}

async fn atoms(
    n: u32,
    m: u32,
    reference: Option<&std::path::Path>,
    runs: usize,
) -> anyhow::Result<()> {
    use nimbus_bench::atoms::{build_reference, kernel_rate, reference_rate};
    use nimbus_workloads::atoms::kernel::KernelPath;
    let all = std::thread::available_parallelism().map_or(1, |c| c.get());
    let dir = tempfile::tempdir()?;
    let exe = match reference {
        Some(source) => Some(build_reference(source, dir.path()).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let best = |f: &dyn Fn() -> anyhow::Result<f64>| -> anyhow::Result<f64> {
        let mut top = 0f64;
        for _ in 0..runs {
            top = top.max(f()?);
        }
        Ok(top)
    };
    println!(
        "atom kernel, n = {n} (n^3 = {} points), m = {m} atoms, best of {runs} runs\n",
        u64::from(n).pow(3)
    );
    println!("| kernel | threads | evaluations/s | vs reference |\n| --- | ---: | ---: | ---: |");
    for threads in [1, all] {
        let reference = match &exe {
            Some(exe) => Some(best(&|| {
                reference_rate(exe, n, m, threads).map_err(anyhow::Error::msg)
            })?),
            None => None,
        };
        for path in KernelPath::all() {
            let rate = tokio::task::spawn_blocking(move || {
                (0..runs)
                    .map(|_| kernel_rate(path, n, m, threads).0)
                    .fold(0f64, f64::max)
            })
            .await?;
            let ratio = reference.map_or_else(|| "–".to_string(), |r| format!("{:.2}x", rate / r));
            println!(
                "| nimbus {} | {threads} | {rate:.3e} | {ratio} |",
                path.name()
            );
        }
        if let Some(r) = reference {
            println!("| reference (gcc -O3 -march=native -ffast-math -fopenmp) | {threads} | {r:.3e} | 1.00x |");
        }
        if all == 1 {
            break;
        }
    }
    Ok(())
}

/// nimbus's GPU kernel over the whole grid (all GPUs), beside the CUDA reference built with nvcc.
fn gpu_atoms(
    n: u32,
    m: u32,
    reference: Option<&std::path::Path>,
    runs: usize,
) -> anyhow::Result<()> {
    use nimbus_bench::atoms::{build_gpu_reference, reference_rate};
    let dir = tempfile::tempdir()?;
    let reference = match reference {
        Some(source) => {
            let exe = build_gpu_reference(source, dir.path()).map_err(anyhow::Error::msg)?;
            let mut top = 0f64;
            for _ in 0..runs {
                top = top.max(reference_rate(&exe, n, m, 1).map_err(anyhow::Error::msg)?);
            }
            Some(top)
        }
        None => None,
    };
    let (name, rate) = gpu_rate(n, m, runs)?;
    println!("\n| GPU kernel | evaluations/s | vs reference |\n| --- | ---: | ---: |");
    let ratio = reference.map_or_else(|| "–".to_string(), |r| format!("{:.2}x", rate / r));
    println!("| nimbus ({name}) | {rate:.3e} | {ratio} |");
    if let Some(r) = reference {
        println!("| reference (nvcc -O3 -arch=sm_90 -use_fast_math) | {r:.3e} | 1.00x |");
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn gpu_rate(n: u32, m: u32, runs: usize) -> anyhow::Result<(String, f64)> {
    use nimbus_workloads::atoms::gpu::Gpus;
    let gpus = Gpus::detect().map_err(|why| anyhow::anyhow!("no GPU kernel: {why}"))?;
    let atoms = nimbus_workloads::atoms::generate(m, n, 1);
    // The first run pays for module loading and allocation; it is not counted.
    gpus.slab_minimum(&atoms, n, 0, n, |_| {})?;
    let mut top = 0f64;
    for _ in 0..runs {
        let started = std::time::Instant::now();
        gpus.slab_minimum(&atoms, n, 0, n, |_| {})?;
        let evals = f64::from(n).powi(3) * f64::from(m);
        top = top.max(evals / started.elapsed().as_secs_f64());
    }
    Ok((gpus.name(), top))
}

#[cfg(not(feature = "cuda"))]
fn gpu_rate(_: u32, _: u32, _: usize) -> anyhow::Result<(String, f64)> {
    anyhow::bail!("--gpu needs the GPU kernel, which this nimbus was built without; build with `--features cuda`")
}

async fn classify(
    url: String,
    dir: &std::path::Path,
    requests: usize,
    concurrency: usize,
    expect: Option<&std::path::Path>,
    wait: f64,
) -> anyhow::Result<()> {
    use nimbus_bench::classify::{load_images, parse_expectations, ClassifyBench};
    anyhow::ensure!(
        requests > 0 && concurrency > 0,
        "--requests and --concurrency must be at least 1"
    );
    let images =
        load_images(dir).with_context(|| format!("cannot read images from {}", dir.display()))?;
    anyhow::ensure!(
        !images.is_empty(),
        "no image (png, jpg, gif, bmp, webp) in {}",
        dir.display()
    );
    let expect = match expect {
        Some(p) => parse_expectations(
            &std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        None => Default::default(),
    };
    let bench = ClassifyBench {
        url,
        images,
        requests,
        concurrency,
        expect,
        wait,
    };
    let r = bench.run().await;
    println!(
        "{requests} requests are sent. {} responses are correct, {} wrong, {} failed.",
        r.correct, r.wrong, r.failed
    );
    println!(
        "{:.2} s in all, {:.1} images/s; latency p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        r.elapsed.as_secs_f64(),
        requests as f64 / r.elapsed.as_secs_f64(),
        r.percentile(0.5).as_secs_f64() * 1e3,
        r.percentile(0.9).as_secs_f64() * 1e3,
        r.percentile(0.99).as_secs_f64() * 1e3,
        r.percentile(1.0).as_secs_f64() * 1e3
    );
    for e in r.errors.iter().chain(&r.mistakes) {
        println!("  {e}");
    }
    anyhow::ensure!(
        r.failed == 0 && r.wrong == 0,
        "not every answer was correct"
    );
    Ok(())
}

#[cfg(feature = "classify")]
async fn model_bench(
    model: &crate::args::ModelArgs,
    image: &std::path::Path,
    runs: usize,
) -> anyhow::Result<()> {
    use nimbus_workloads::classify::model::Classifier;
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    let bytes = std::fs::read(image).with_context(|| format!("cannot read {}", image.display()))?;
    let (model, labels) = model.resolve().map_err(anyhow::Error::msg)?;
    let started = std::time::Instant::now();
    let classifier = Classifier::load(&model, &labels).map_err(anyhow::Error::msg)?;
    let load = started.elapsed();
    classifier.time_inference(&bytes, 5)?;
    let mut times: Vec<f64> = classifier
        .time_inference(&bytes, runs)?
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    let tract = median(&mut times);
    let top = classifier.classify(&bytes, 1)?;
    println!(
        "model {}, image {} (top label: {})\n",
        model.display(),
        image.display(),
        top[0].label
    );
    println!(
        "| runtime | threads | load | per image (median of {runs}) |\n| --- | ---: | ---: | ---: |"
    );
    println!(
        "| nimbus (tract-onnx) | 1 | {:.0} ms | {tract:.2} ms |",
        load.as_secs_f64() * 1e3
    );
    let model_path = model.display().to_string();
    match run_peer("onnxruntime_peer.py", &[&model_path, &runs.to_string()]).await {
        Ok(text) => {
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or("?")
                    .to_string()
            };
            let version = text.lines().next().unwrap_or("onnxruntime").to_string();
            println!(
                "| {version} | 1 | {} ms | {} ms |",
                field("load_ms "),
                field("ms_per_image ")
            );
        }
        Err(why) => println!("| onnxruntime | 1 | not run: {why} | |"),
    }
    Ok(())
}

#[cfg(any(feature = "classify", feature = "aws"))]
/// Runs a peer program of `bench/` with python3; its standard output, or why it did not run
/// (a peer that misses its packages says which, on standard output, and exits non-zero).
async fn run_peer(script: &str, args: &[&str]) -> Result<String, String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench")
        .join(script);
    let out = tokio::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(text.trim().to_string())
    }
}

#[cfg(not(feature = "classify"))]
async fn model_bench(
    _: &crate::args::ModelArgs,
    _: &std::path::Path,
    _: usize,
) -> anyhow::Result<()> {
    anyhow::bail!("this nimbus was built without image classification (cargo feature `classify`)")
}

/// A fresh embedded engine in a temporary directory, so a benchmark never touches user data.
fn scratch_engine() -> anyhow::Result<(tempfile::TempDir, std::path::PathBuf, nimbus_core::Engine)>
{
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let db = dir.path().join("bench.db");
    let engine =
        SqliteEngine::open(&db, SqliteOptions::default())?.into_engine(dir.path().join("blobs"))?;
    Ok((dir, db, engine))
}

async fn engine(bench: EngineBench, baseline: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let sqlite = SqliteEngine::open(dir.path().join("bench.db"), SqliteOptions::default())?;
    // Behind the core rules, as every engine's queue is.
    let queue: Arc<dyn nimbus_core::Queue> =
        Arc::new(nimbus_core::validate::CheckedQueue(Arc::new(sqlite)));
    println!(
        "embedded engine (sqlite, WAL, synchronous=NORMAL: durable against process crash), {} messages of {} bytes, median of {} runs",
        bench.messages, bench.payload, bench.runs
    );
    println!("\n| scenario | messages/s |\n| --- | ---: |");
    for scenario in SCENARIOS {
        let mut rates = Vec::new();
        for _ in 0..bench.runs {
            rates.push(bench.run(&queue, scenario).await?);
        }
        println!("| {scenario} | {:.0} |", median(&mut rates));
    }
    if baseline {
        let mut rates = Vec::new();
        for run in 0..bench.runs {
            let db = dir.path().join(format!("raw-{run}.db"));
            let (messages, payload) = (bench.messages, bench.payload);
            let rate = tokio::task::spawn_blocking(move || {
                raw_sqlite::round_trip(&db, messages, 100, payload)
            })
            .await??;
            rates.push(rate);
        }
        println!(
            "| ceiling: minimal queue on raw SQLite, round trip, 1 task, batch 100 | {:.0} |",
            median(&mut rates)
        );
    }
    Ok(())
}

/// The AWS engine's queue against a moto server on this machine, for the scenarios one task runs
/// (moto does not make concurrent receives atomic). The figures are moto's, not AWS's.
#[cfg(feature = "aws")]
async fn moto_engine(bench: EngineBench) -> anyhow::Result<()> {
    let moto = nimbus_aws::moto::MotoServer::start()?;
    let aws = nimbus_aws::AwsEngine::connect(moto.config("bench-")).await?;
    let engine = aws.engine(&nimbus_aws::S3Location::parse("s3://bench")?)?;
    println!(
        "\nAWS engine (SQS API) against moto on 127.0.0.1 ({}; moto's speed, not AWS's), {} messages of {} bytes, median of {} runs",
        moto.endpoint(),
        bench.messages,
        bench.payload,
        bench.runs
    );
    println!("\n| scenario | messages/s |\n| --- | ---: |");
    let one_task = SCENARIOS.into_iter().filter(|s| {
        !matches!(
            s,
            nimbus_bench::engine::Scenario::RoundTripConcurrent { .. }
        )
    });
    for scenario in one_task {
        let mut rates = Vec::new();
        for _ in 0..bench.runs {
            rates.push(bench.run(&engine.queue, scenario).await?);
        }
        println!("| {scenario} | {:.0} |", median(&mut rates));
    }
    boto3_peer(&moto.endpoint(), bench.messages).await;
    Ok(())
}

/// The same server driven by boto3 (`bench/moto_boto3_peer.py`): how fast moto itself goes.
#[cfg(feature = "aws")]
async fn boto3_peer(endpoint: &str, messages: usize) {
    match run_peer("moto_boto3_peer.py", &[endpoint, &messages.to_string()]).await {
        Ok(text) => {
            for line in text.lines() {
                let Some((scenario, rate)) = line.rsplit_once(' ') else {
                    continue;
                };
                let scenario = match scenario {
                    "send_batch_10" => "send, batch 10",
                    "receive_delete_batch_10" => "receive+delete, batch 10",
                    other => other,
                };
                println!("| peer: boto3 on the same server, {scenario} | {rate} |");
            }
        }
        Err(why) => println!("| peer: boto3 | not run: {why} |"),
    }
}

#[cfg(not(feature = "aws"))]
async fn moto_engine(_: EngineBench) -> anyhow::Result<()> {
    anyhow::bail!("--moto needs the AWS engine, which this nimbus was built without; build with `--features aws`")
}

async fn efficiency(slots: &[usize], scale: f64) -> anyhow::Result<()> {
    let ms = |base: f64| (base * scale).round().max(1.0) as u64;
    let workloads = [
        Workload {
            count: 10,
            ms: ms(1000.0),
        },
        Workload {
            count: 100,
            ms: ms(100.0),
        },
        Workload {
            count: 1000,
            ms: ms(10.0),
        },
    ];
    println!("\nEfficiency: one worker with N concurrency slots, embedded engine, end to end (submit to every report collected)");
    println!("time in seconds (efficiency = ideal time / measured time; ideal = whole waves of tasks x task time)\n");
    let header: Vec<String> = workloads.iter().map(ToString::to_string).collect();
    println!(
        "| slots | {} |\n| ---: |{}",
        header.join(" | "),
        " ---: |".repeat(workloads.len())
    );
    for &n in slots {
        let mut cells = Vec::new();
        for w in &workloads {
            let (_dir, _db, engine) = scratch_engine()?;
            let took = in_process(engine, n, &w.lines()).await?;
            let eff = w.ideal(n).as_secs_f64() / took.as_secs_f64();
            cells.push(format!("{:.3} ({:.1} %)", took.as_secs_f64(), eff * 100.0));
        }
        println!("| {n} | {} |", cells.join(" | "));
    }
    Ok(())
}

async fn throughput(
    workers: &[usize],
    count: usize,
    concurrency: usize,
    celery: bool,
    free_slot: &[nimbus_worker::FreeSlot],
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the nimbus binary")?;
    let lines = vec!["sleep 0".to_string(); count];
    println!(
        "\nThroughput: {count} no-op tasks (`sleep 0`) end to end: submit, run, report, collect ({})",
        nimbus_bench::cpu_model()
    );
    println!("\n| back end | workers | tasks/s |\n| --- | ---: | ---: |");
    for &moment in free_slot {
        let name = moment.name();
        for &n in workers {
            let (_dir, db, engine) = scratch_engine()?;
            prepare(&engine).await?;
            let extra = ["--free-slot".to_string(), name.to_string()];
            let processes = WorkerProcesses::start(&exe, &db, n, concurrency, &extra)?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let took = submit_and_wait(&engine, &lines).await?;
            drop(processes);
            println!(
                "| nimbus worker processes ({concurrency} slots each, slot freed when {name}), embedded engine | {n} | {:.0} |",
                count as f64 / took.as_secs_f64()
            );
        }
    }
    for &n in workers {
        let took = tokio::task::spawn_blocking(move || local_pool(n, count)).await?;
        println!(
            "| local thread pool (no queue) | {n} | {:.0} |",
            count as f64 / took.as_secs_f64()
        );
    }
    if celery {
        for &n in workers {
            match celery_peer(count, n).await {
                Ok(rate) => {
                    println!("| Celery + Redis (prefork, results kept) | {n} | {rate:.0} |")
                }
                Err(e) => {
                    println!("| Celery + Redis | {n} | not run: {e:#} |");
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Runs `bench/celery_peer.py`, which prints `tasks_per_second N` last.
async fn celery_peer(count: usize, workers: usize) -> anyhow::Result<f64> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/celery_peer.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .args([
            "--tasks",
            &count.to_string(),
            "--workers",
            &workers.to_string(),
        ])
        .output()
        .await
        .context("cannot run python3")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "{} {}",
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("tasks_per_second "))
        .and_then(|v| v.trim().parse().ok())
        .context("the Celery script printed no tasks_per_second line")
}

/// `nimbus bench http`: one load, or seed 003's scenario.
async fn http(a: BenchHttpArgs) -> anyhow::Result<()> {
    use nimbus_bench::http::{self as bench, Endpoint, Load, Mode, Scenario, Stop};
    let endpoint = Endpoint::parse(&a.url)?;
    anyhow::ensure!(
        a.connections.is_none_or(|c| (1..=10_000).contains(&c)),
        "--connections must be 1 to 10000"
    );
    anyhow::ensure!(
        a.rate.is_none_or(|r| r > 0.0 && r.is_finite()),
        "--rate must be above 0 requests per second"
    );
    let report = match a.scenario.as_deref() {
        Some("seed-003") => {
            anyhow::ensure!(
                !a.paths.is_empty() && a.paths.iter().all(|p| p.starts_with('/')),
                "--paths: one or more paths starting with /"
            );
            let scenario = Scenario {
                base: endpoint,
                paths: a.paths.clone(),
                first: a.first,
                second: a.second,
                pause: a.pause,
                connections: a.connections.unwrap_or(4),
                mode: a.rate.map_or(Mode::Closed, |rate| Mode::Open { rate }),
                timeout: a.timeout,
            };
            let bucket = a.bucket.unwrap_or(Duration::from_secs(10));
            bench::run_scenario(&scenario, bucket, |line| eprintln!("{line}")).await?
        }
        Some(other) => anyhow::bail!("unknown scenario `{other}`: seed-003"),
        None => {
            let stop = match (a.requests, a.duration) {
                (Some(0), _) => anyhow::bail!("--requests must be at least 1"),
                (Some(n), _) => Stop::Requests(n),
                (None, Some(d)) => Stop::After(d),
                (None, None) => Stop::After(Duration::from_secs(10)),
            };
            let load = Load {
                endpoint,
                mode: a.rate.map_or(Mode::Closed, |rate| Mode::Open { rate }),
                connections: a.connections.unwrap_or(64),
                stop,
                timeout: a.timeout,
            };
            bench::run(&load, a.bucket.unwrap_or(Duration::from_secs(1))).await?
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", bench::table(&report));
    }
    if let Some(dir) = &a.out {
        let written = nimbus_bench::http_report::write(&report, dir)?;
        eprintln!(
            "report written: {} ({} files)",
            dir.join("report.html").display(),
            written.len()
        );
    }
    Ok(())
}

async fn video(
    images: Vec<usize>,
    runs: usize,
    width: u32,
    height: u32,
    ffmpeg: std::path::PathBuf,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        images.iter().all(|&n| (1..=500).contains(&n)) && runs >= 1,
        "--images counts must be within 1 to 500 and --runs at least 1"
    );
    let dir = tempfile::tempdir()?;
    let engine =
        nimbus_sqlite::SqliteEngine::open(dir.path().join("bench.db"), Default::default())?
            .into_engine(dir.path().join("blobs"))?;
    let bench = nimbus_bench::video::VideoBench {
        images,
        runs,
        width,
        height,
        ffmpeg,
    };
    eprintln!("making videos of {width}x{height} images, {runs} run(s) each…");
    let rows = nimbus_bench::video::run(engine, &bench)
        .await
        .map_err(anyhow::Error::msg)?;
    println!(
        "CPU: {} ({} cores)",
        nimbus_bench::cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    print!("{}", nimbus_bench::video::table(&rows));
    Ok(())
}

async fn jobs_bench(jobs: usize, runs: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=10_000_000).contains(&jobs) && runs >= 1,
        "--jobs must be 1 to 10,000,000 and --runs at least 1"
    );
    let dir = tempfile::tempdir()?;
    let engine =
        nimbus_sqlite::SqliteEngine::open(dir.path().join("bench.db"), Default::default())?
            .into_engine(dir.path().join("blobs"))?;
    eprintln!("writing {jobs} job records…");
    let figures = nimbus_bench::jobs::run(engine, jobs, runs)
        .await
        .map_err(anyhow::Error::msg)?;
    println!(
        "CPU: {} ({} cores); {jobs} jobs, median of {runs}",
        nimbus_bench::cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| what | time |\n| --- | ---: |");
    for f in figures {
        println!("| {} | {:.3} ms |", f.what, f.median.as_secs_f64() * 1000.0);
    }
    Ok(())
}
