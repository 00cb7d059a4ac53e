//! The command line: every subcommand, its flags and their help.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::engine_url::DEFAULT_ENGINE;

/// nimbus: an elastic, queue-driven cloud computing platform.
#[derive(Debug, Parser)]
#[command(name = "nimbus", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// More log output (-v info, -vv debug); NIMBUS_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the engine lives.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Engine URL: sqlite://PATH[?sync=full], or aws://?region=R&endpoint=URL&prefix=P (SQS,
    /// SNS, DynamoDB, S3; credentials from the standard AWS chain).
    #[arg(long, global = true, env = "NIMBUS_ENGINE", default_value = DEFAULT_ENGINE)]
    pub engine: String,
    /// Blob store URL: file://DIR (default: blobs/ beside the database), or s3://BUCKET[/PREFIX]
    /// with the aws engine.
    #[arg(long, global = true, env = "NIMBUS_BLOBS")]
    pub blobs: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with queues: create, send, receive, delete, depth, list.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Work with topics: create, subscribe, publish.
    #[command(subcommand)]
    Topic(TopicCmd),
    /// Work with the ledger: get, put, add, list.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// Run the whole platform in one process: web tier, generator and solvers on the embedded
    /// engine; prints the URL of the GUI.
    Up(UpArgs),
    /// Run the web tier alone (REST API, GUI, events) against the engine.
    Web(WebArgs),
    /// Run a worker: receive tasks from queues and run them until stopped (Ctrl-C, SIGTERM).
    Worker(WorkerArgs),
    /// The CloudKon task framework (seed 002): generate, submit, run locally, check.
    #[command(subcommand)]
    Tasks(TasksCmd),
    /// Seed 002's Animoto job: write a workload of video tasks (images to MP4s).
    #[command(subcommand)]
    Video(VideoCmd),
    /// Benchmarks; figures go to docs/benchmarks.md.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Grow and shrink the app tier with its queues: worker processes on this machine (local)
    /// or EC2 instances, decided by a policy every interval. Ctrl-C stops it and, with the
    /// local provider, the workers it launched.
    Autoscale(AutoscaleArgs),
    /// Elasticity: replay request traces against the scaling policies.
    #[command(subcommand)]
    Scale(ScaleCmd),
    /// Run the L7 load balancer: path rules to target groups, health checks, retries, metrics
    /// (seed 003's ALB). The simple case on flags alone: --listen ADDR --target ADDR --target ..;
    /// the rest from a TOML file (--config), reloaded on SIGHUP.
    Lb(LbArgs),
    /// Seed 003's load-balanced clusters on this machine: replicas of the web tier behind the
    /// load balancer with path routing. Ctrl-C stops them all.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Provision, inspect and remove a deployment on AWS (--engine aws://.. --blobs s3://..).
    #[cfg(feature = "aws")]
    #[command(subcommand)]
    Aws(AwsCmd),
}

/// `nimbus scale ...`.
#[derive(Debug, Subcommand)]
pub enum ScaleCmd {
    /// Replay a trace (arrival and service times) against each policy with a model of start-up
    /// times and billing; print completion times, instance-seconds and actions side by side.
    Simulate(SimulateArgs),
}

/// `nimbus scale simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// A trace file: `arrival_seconds,service_seconds` a line (`#` comments).
    #[arg(long, conflicts_with_all = ["burst", "generate"])]
    pub trace: Option<PathBuf>,
    /// N requests at once (the seeds sent 10, 50 and 100 images).
    #[arg(long, conflicts_with = "generate")]
    pub burst: Option<usize>,
    /// A generated trace: burst-10, burst-50, burst-100, diurnal, spikes, trickle, or all.
    #[arg(long)]
    pub generate: Option<String>,
    /// A policy to compare (repeatable): backlog, seed-001, seed-004; all of them by default.
    #[arg(long = "policy")]
    pub policies: Vec<String>,
    /// The least active instances.
    #[arg(long, default_value_t = 0)]
    pub min: u32,
    /// The most active instances (seed 001's cap).
    #[arg(long, default_value_t = 19)]
    pub max: u32,
    /// Mean service time of a generated request (each is drawn within +-50 %).
    #[arg(long, value_parser = duration, default_value = "2s")]
    pub service: Duration,
    /// From a launch to a working instance.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub launch_time: Duration,
    /// From a start of a stopped instance to a working one.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub start_time: Duration,
    /// How often the policy decides.
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub interval: Duration,
    /// Requests one instance serves at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: u32,
    /// Write a chart per trace (SVG) into this directory.
    #[arg(long)]
    pub charts: Option<PathBuf>,
    /// Write the (generated) traces into this directory, readable by --trace.
    #[arg(long)]
    pub write_traces: Option<PathBuf>,
    /// Seed for the generated service times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `nimbus aws ...`: the deployment named by the engine URL's prefix.
#[cfg(feature = "aws")]
#[derive(Debug, Subcommand)]
pub enum AwsCmd {
    /// Create the ledger table, the blob bucket, the events topic and the platform's queues with
    /// their dead-letter queues, unless they exist; print what was made.
    Up {
        /// A message received this many times without success moves to the queue's `-dead` queue.
        #[arg(long, default_value_t = 5)]
        max_receives: u32,
    },
    /// Remove the deployment's queues, topics and table; with --delete-blobs also its blobs and,
    /// once empty, the bucket.
    Down {
        /// Also delete every blob under the --blobs location (results, uploads).
        #[arg(long)]
        delete_blobs: bool,
    },
    /// Show the deployment's queues with their depths and the ledger's item count.
    Status,
}

/// `nimbus lb`.
#[derive(Debug, Clone, Args)]
pub struct LbArgs {
    /// A TOML configuration (listeners, rules, groups, health checks; see docs/lb.md); SIGHUP
    /// reloads it.
    #[arg(long, conflicts_with_all = ["listen", "targets", "balance", "health_path", "tls_cert"])]
    pub config: Option<PathBuf>,
    /// Where clients connect.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: std::net::SocketAddr,
    /// A target, HOST:PORT (repeatable): one group, every path to it.
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// round-robin or least-outstanding.
    #[arg(long, default_value = "round-robin")]
    pub balance: String,
    /// The targets' health check path.
    #[arg(long, default_value = "/healthz")]
    pub health_path: String,
    /// Serve the balancer's /metrics, /status and /status.json here.
    #[arg(long)]
    pub admin: Option<std::net::SocketAddr>,
    /// Serve HTTPS on --listen with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// `nimbus cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Start N clusters of R `nimbus web` replicas each (replica `clusterC-R` answers its
    /// instance id on `/clusterC`) and the load balancer in front: `/clusterC` and `/clusterC/*`
    /// go to cluster C, every other path to all replicas.
    Up(ClusterUpArgs),
}

/// `nimbus cluster up`.
#[derive(Debug, Clone, Args)]
pub struct ClusterUpArgs {
    /// Clusters.
    #[arg(long, default_value_t = 2)]
    pub clusters: u32,
    /// Replicas per cluster.
    #[arg(long, default_value_t = 4)]
    pub replicas: u32,
    /// Address of the balancer and the replicas.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// The balancer's port (0: any free port).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The balancer's admin port (/metrics, /status); default: any free port.
    #[arg(long, default_value_t = 0)]
    pub admin_port: u16,
    /// round-robin or least-outstanding.
    #[arg(long, default_value = "round-robin")]
    pub balance: String,
}

#[derive(Debug, Clone, Args)]
pub struct WebArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Largest grid size of an atoms job.
    #[arg(long, default_value_t = 512)]
    pub max_grid: u32,
    /// Most atoms of an atoms job.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_atoms: u32,
    /// Most atom evaluations (grid points x atoms) of one job.
    #[arg(long, default_value_t = 2e11)]
    pub max_work: f64,
    /// As a replica of a cluster (seed 003): answer `GET PATH` with this replica's instance id.
    #[arg(long)]
    pub cluster_path: Option<String>,
    /// This replica's name in its cluster (default: HOST-PID).
    #[arg(long, requires = "cluster_path")]
    pub instance_id: Option<String>,
}

/// Where the image model is.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// An ImageNet-style ONNX classifier taking [1, 3, 224, 224] (default:
    /// models/efficientnet-lite0.onnx in the working directory, beside the executable, or in
    /// the checkout nimbus was built from).
    #[arg(long, env = "NIMBUS_MODEL")]
    pub model: Option<PathBuf>,
    /// Its labels, a JSON array of names in class order (default: models/imagenet1k-labels.json,
    /// found as the model is).
    #[arg(long, env = "NIMBUS_LABELS")]
    pub labels: Option<PathBuf>,
}

/// The model shipped with nimbus, relative to a `models/` folder's parent.
const MODEL: &str = "models/efficientnet-lite0.onnx";
const LABELS: &str = "models/imagenet1k-labels.json";

impl ModelArgs {
    /// The model's and labels' paths, absolute, so that workers started elsewhere find them too:
    /// as given, or the first of the working directory, the executable's folder and its
    /// parents, and the checkout this binary was built from that holds them.
    pub fn resolve(&self) -> Result<(PathBuf, PathBuf), String> {
        let absolute =
            |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        for given in [&self.model, &self.labels].into_iter().flatten() {
            if !given.is_file() {
                return Err(format!("{} is not a file", given.display()));
            }
        }
        if let (Some(model), Some(labels)) = (&self.model, &self.labels) {
            return Ok((absolute(model), absolute(labels)));
        }
        let mut roots: Vec<PathBuf> = vec![PathBuf::from(".")];
        if let Ok(exe) = std::env::current_exe() {
            roots.extend(
                exe.ancestors()
                    .skip(1)
                    .take(4)
                    .map(std::path::Path::to_path_buf),
            );
        }
        roots.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")));
        let found = |relative: &str| roots.iter().map(|r| r.join(relative)).find(|p| p.is_file());
        let model = match &self.model {
            Some(m) => m.clone(),
            None => found(MODEL).ok_or_else(|| {
                format!("no {MODEL} in the working directory, beside the executable or in the checkout nimbus was built from")
            })?,
        };
        let labels = match &self.labels {
            Some(l) => l.clone(),
            None => model
                .parent()
                .map(|dir| dir.join("imagenet1k-labels.json"))
                .filter(|p| p.is_file())
                .or_else(|| found(LABELS))
                .ok_or_else(|| format!("no {LABELS} beside {}", model.display()))?,
        };
        Ok((absolute(&model), absolute(&labels)))
    }
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub web: WebArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Solver slots (default: the number of cores).
    #[arg(long)]
    pub solvers: Option<usize>,
    #[command(flatten)]
    pub scale: ScaleArgs,
    /// Tasks each app-tier worker process runs at once.
    #[arg(long, default_value_t = 4)]
    pub worker_concurrency: usize,
    #[command(flatten)]
    pub video: VideoArgs,
}

/// How the app tier scales (`nimbus up`, `nimbus autoscale`).
#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// The scaling policy: backlog (target tracking on backlog per worker, the default),
    /// seed-001 or seed-004.
    #[arg(long, default_value = "backlog")]
    pub policy: String,
    /// Workers kept running however idle (warm); default: 1 for `nimbus up`, the policy's own
    /// otherwise (seed-001 and seed-004 0, backlog 1).
    #[arg(long)]
    pub min: Option<u32>,
    /// The most workers; default: the number of cores for `nimbus up`, the policy's own
    /// otherwise (seed-001 19, seed-004 20, backlog 8).
    #[arg(long)]
    pub max: Option<u32>,
    /// How long the work must stay lower before workers are taken away.
    #[arg(long, value_parser = duration, default_value = "2m")]
    pub idle: Duration,
    /// Messages (waiting or in flight) one worker is meant to carry (default: its concurrency).
    #[arg(long)]
    pub per_instance: Option<f64>,
    /// How often the autoscaler decides.
    #[arg(long, value_parser = duration, default_value = "2s")]
    pub interval: Duration,
}

/// `nimbus autoscale`.
#[derive(Debug, Clone, Args)]
pub struct AutoscaleArgs {
    /// A queue whose work the fleet does (repeatable).
    #[arg(long = "queue", required = true)]
    pub queues: Vec<String>,
    /// Where instances come from: local (`nimbus worker` processes on this machine) or ec2.
    #[arg(long, default_value = "local")]
    pub provider: String,
    #[command(flatten)]
    pub scale: ScaleArgs,
    /// Tasks each worker runs at once.
    #[arg(long, default_value_t = 4)]
    pub worker_concurrency: usize,
    /// A further argument for every worker (repeatable), e.g. --worker-arg=--allow-exec='sleep .*';
    /// on EC2, whose worker unit splits its arguments at whitespace, without spaces.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    pub worker_args: Vec<String>,
    /// The engine URL as the workers reach it (default: the --engine URL).
    #[arg(long)]
    pub worker_engine: Option<String>,
    /// EC2: the worker image (an AMI with `nimbus` installed; see docs/aws.md).
    #[arg(long)]
    pub image: Option<String>,
    /// EC2: the instance type.
    #[arg(long, default_value = "t3.small")]
    pub instance_type: String,
    /// EC2: the IAM instance profile of the workers.
    #[arg(long)]
    pub profile: Option<String>,
    /// EC2: the deployment tag of the instances (default: the engine URL's prefix).
    #[arg(long)]
    pub deployment: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// A queue to receive from (repeatable): tasks, atoms-generate, atoms-solve, classify-requests,
    /// video.
    #[arg(long = "queue", default_value = nimbus_workloads::tasks::TASKS_QUEUE)]
    pub queues: Vec<String>,
    /// Tasks run at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Most messages per receive.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Lease of each delivery, renewed every half of it while a task runs.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub visibility: Duration,
    /// How long running tasks may finish after Ctrl-C or SIGTERM before they are given back.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub grace: Duration,
    /// Exit after this long with nothing to do (the seed's workers ran until the queue was empty).
    #[arg(long, value_parser = duration)]
    pub exit_when_idle: Option<Duration>,
    /// Allow shell tasks whose whole command line matches this regex (default: only `sleep MS`).
    #[arg(long)]
    pub allow_exec: Option<String>,
    /// Names this worker in claims and reports (default: host-pid).
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Skip the ledger claim: at-least-once instead of effectively-once.
    #[arg(long)]
    pub no_dedup: bool,
    /// How long a task's ended claim is kept, so that a duplicate of the task is recognised
    /// within it; the workers sweep older ones (one at a time). After it, the same task id is
    /// a new task. Keep it above the queues' message retention (SQS's default is 4 days).
    #[arg(long, value_parser = duration, default_value = "7d")]
    pub claim_retention: Duration,
    /// A task whose worker ended while running it this many times (each time running alone)
    /// fails for good with a report that says so: it may be what kills its workers.
    #[arg(long, default_value_t = nimbus_worker::DEFAULT_MAX_CRASHES, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_crashes: u32,
    /// When a finished task's slot takes the next task: `finished` (once its handler returns)
    /// or `recorded` (once its end is durable, so a worker never holds more unrecorded ends
    /// than slots, however long its engine stalls). docs/benchmarks.md measures both: tasks run
    /// twice per kill, and throughput.
    #[arg(long, default_value = "finished")]
    pub free_slot: nimbus_worker::FreeSlot,
    /// Stop (cleanly) when the process that started this worker ends, even by kill -9: what an
    /// autoscaler's local workers do.
    #[arg(long)]
    pub exit_with_parent: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub video: VideoArgs,
}

/// How workers make videos (`nimbus worker`, and the workers `nimbus up` starts).
#[derive(Debug, Clone, Args)]
pub struct VideoArgs {
    /// A host video jobs may fetch images from: HOST, HOST:PORT, [IPv6]:PORT, or * for any
    /// public host (repeatable). Loopback, private and link-local addresses are fetched only
    /// when named here by address (e.g. 127.0.0.1:8000). Default: none.
    #[arg(long = "allow-fetch", value_name = "HOST[:PORT]")]
    pub allow_fetch: Vec<String>,
    /// The ffmpeg executable (default: `ffmpeg` on PATH).
    #[arg(long, value_name = "PATH", default_value = "ffmpeg")]
    pub ffmpeg: PathBuf,
    /// The largest image fetched, in bytes.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub fetch_max_bytes: u64,
    /// The longest one image fetch may take (redirects included).
    #[arg(long, value_parser = duration, default_value = "20s")]
    pub fetch_timeout: Duration,
    /// The longest ffmpeg may run for one video.
    #[arg(long, value_parser = duration, default_value = "10m")]
    pub encode_timeout: Duration,
}

/// `nimbus video ...`.
#[derive(Debug, Subcommand)]
pub enum VideoCmd {
    /// Write a workload of COUNT video tasks (seed 002's Animoto generator), one `video {JSON}`
    /// line each, for `nimbus tasks submit`: images from a directory (stored in blobs first, so
    /// workers anywhere read them) or a file of URLs (one a line).
    Gen {
        /// How many video tasks (each one video).
        count: usize,
        /// A directory of images (PNG, JPEG, GIF, BMP, WebP), uploaded to blobs.
        #[arg(long, conflicts_with = "urls", required_unless_present = "urls")]
        images: Option<PathBuf>,
        /// A file of image URLs, one a line (`#` comments); workers need --allow-fetch.
        #[arg(long)]
        urls: Option<PathBuf>,
        /// Images per video (default: all of them); taken in turn from the list.
        #[arg(long)]
        per_video: Option<usize>,
        /// Seconds each image shows.
        #[arg(long, default_value_t = 1.0)]
        frame_seconds: f64,
        /// Frame width.
        #[arg(long, default_value_t = 640)]
        width: u32,
        /// Frame height.
        #[arg(long, default_value_t = 480)]
        height: u32,
        /// Seconds of cross-fade between images (0: cuts).
        #[arg(long, default_value_t = 0.0)]
        crossfade_seconds: f64,
        /// The file to write.
        #[arg(long, short, default_value = "video-workload.txt")]
        output: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TasksCmd {
    /// Write a workload file: COUNT lines of TASK (e.g. `tasks gen 10 sleep 10000`; quote a task
    /// with dashes: `tasks gen 5 "ls -la"`).
    Gen {
        count: usize,
        /// The task: `sleep MS`, or a shell command (workers need --allow-exec for those).
        #[arg(required = true)]
        task: Vec<String>,
        /// The file to write.
        #[arg(long, short, default_value = "workload.txt")]
        output: PathBuf,
    },
    /// Submit a workload file under a new session; prints the session id.
    Submit {
        file: PathBuf,
        /// The queue workers take tasks from.
        #[arg(long, default_value = nimbus_workloads::tasks::TASKS_QUEUE)]
        queue: String,
        /// The queue reports go to.
        #[arg(long, default_value = nimbus_workloads::tasks::RESULTS_QUEUE)]
        reply_to: String,
    },
    /// Run a workload file on a local thread pool, no queue at all (the seed's local back end).
    Local {
        file: PathBuf,
        /// Threads in the pool (default: the number of cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Allow shell tasks whose whole command line matches this regex.
        #[arg(long)]
        allow_exec: Option<String>,
    },
    /// Collect reports from the response queue and say whether every task is accounted for
    /// (exit status 0 when it is, 1 when tasks are missing).
    Check {
        /// The response queue.
        #[arg(long, default_value = nimbus_workloads::tasks::RESULTS_QUEUE)]
        queue: String,
        /// Only this session (default: every session submitted here).
        #[arg(long)]
        session: Option<String>,
        /// Keep collecting up to this long until the sessions are complete.
        #[arg(long, value_parser = duration, default_value = "0s")]
        wait: Duration,
    },
}

/// A duration such as `30s`, `500ms` or `2m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 30s or 500ms: {e}"))
}

/// `KEY=VALUE`.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// Create a queue (a name ending in .fifo makes a FIFO queue); idempotent.
    Create {
        name: String,
        /// How long a received message stays hidden.
        #[arg(long, value_parser = duration, default_value = "30s")]
        visibility_timeout: Duration,
        /// How long an undeleted message is kept (60s to 14d).
        #[arg(long, value_parser = duration, default_value = "4days")]
        retention: Duration,
        /// The largest message in bytes (up to 1048576).
        #[arg(long, default_value_t = nimbus_core::queue::DEFAULT_MAX_MESSAGE_BYTES)]
        max_message_bytes: usize,
        /// FIFO only: deduplicate on the body's SHA-256 when no --dedup-id is given.
        #[arg(long)]
        content_dedup: bool,
        /// Move messages received too often to this queue (it must exist).
        #[arg(long, requires = "max_receives")]
        dead_letter: Option<String>,
        /// Receives before a message moves to the dead-letter queue.
        #[arg(long, requires = "dead_letter")]
        max_receives: Option<u32>,
    },
    /// Send one message per BODY (or one per line of standard input with --stdin).
    Send {
        queue: String,
        bodies: Vec<String>,
        /// Read bodies from standard input, one per line.
        #[arg(long, conflicts_with = "bodies")]
        stdin: bool,
        /// An attribute KEY=VALUE (repeatable).
        #[arg(long = "attr", value_parser = key_value)]
        attributes: Vec<(String, String)>,
        /// FIFO message group.
        #[arg(long)]
        group: Option<String>,
        /// FIFO deduplication id.
        #[arg(long)]
        dedup_id: Option<String>,
        /// Deliver after this delay (standard queues).
        #[arg(long, value_parser = duration)]
        delay: Option<Duration>,
    },
    /// Receive messages and print them as JSON lines (with their receipts).
    Receive {
        queue: String,
        /// At most this many messages.
        #[arg(long, default_value_t = 1)]
        max: usize,
        /// Long-poll up to this long for a first message.
        #[arg(long, value_parser = duration, default_value = "0s")]
        wait: Duration,
        /// Hide the messages this long (default: the queue's visibility timeout).
        #[arg(long, value_parser = duration)]
        visibility: Option<Duration>,
        /// Delete the messages once printed.
        #[arg(long)]
        delete: bool,
    },
    /// Delete (acknowledge) received messages by receipt.
    Delete {
        queue: String,
        #[arg(required = true)]
        receipts: Vec<String>,
    },
    /// Change a received message's visibility (0s releases it).
    Visibility {
        queue: String,
        receipt: String,
        #[arg(value_parser = duration)]
        timeout: Duration,
    },
    /// Visible, in-flight and delayed counts (of every queue when none is named).
    Depth { queues: Vec<String> },
    /// List queues.
    List,
    /// Delete every message of a queue.
    Purge { queue: String },
    /// Remove a queue and its messages.
    Remove { queue: String },
}

#[derive(Debug, Subcommand)]
pub enum TopicCmd {
    /// Create a topic; idempotent.
    Create { name: String },
    /// Subscribe a queue, optionally filtered: --filter KEY=V1,V2 (repeatable; all keys must match).
    Subscribe {
        topic: String,
        queue: String,
        #[arg(long = "filter", value_parser = key_value)]
        filters: Vec<(String, String)>,
    },
    /// Remove a subscription by id.
    Unsubscribe { subscription: String },
    /// List a topic's subscriptions.
    Subscriptions { topic: String },
    /// Publish a message to every subscribed queue whose filter passes.
    Publish {
        topic: String,
        body: String,
        #[arg(long = "attr", value_parser = key_value)]
        attributes: Vec<(String, String)>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Print an item as JSON.
    Get { partition: String, sort: String },
    /// Write an item's value.
    Put {
        partition: String,
        sort: String,
        value: String,
        /// Only if there is no item yet.
        #[arg(long, conflicts_with = "if_version")]
        if_absent: bool,
        /// Only if the item is at this version.
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Add to an item's counter and print the new value.
    Add {
        partition: String,
        sort: String,
        #[arg(allow_negative_numbers = true)]
        delta: i64,
    },
    /// Print every item of a partition as JSON lines.
    List { partition: String },
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// HTTP load: closed loop (--connections) or open loop (--rate, latency from the planned
    /// send time), HdrHistogram percentiles, figures per time bucket and per target; with
    /// --scenario seed-003, seed 003's benchmark through a balancer (--out writes its report:
    /// JSON, table, PNG charts, HTML).
    Http(BenchHttpArgs),
    /// Throughput of the engine's queue: sends, receive+delete, round trips; beside a minimal
    /// queue on raw SQLite as the ceiling.
    Engine {
        /// Messages per scenario.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Body size in bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Repetitions of each scenario (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Skip the raw SQLite baseline.
        #[arg(long)]
        no_baseline: bool,
        /// Also measure the AWS engine against a moto server started for the run (needs
        /// `moto_server` on PATH and the `aws` feature); this many messages per scenario.
        #[arg(long, value_name = "MESSAGES")]
        moto: Option<usize>,
    },
    /// The atom kernel's evaluations per second, 1 thread and all threads, beside a C reference
    /// program built here with gcc and run on the same n and m.
    Atoms {
        /// Grid size.
        #[arg(long, default_value_t = 128)]
        n: u32,
        /// Atoms.
        #[arg(long, default_value_t = 1000)]
        m: u32,
        /// The reference's C source (e.g. ../shared/reference/dcs_cpu.c); none: nimbus only.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Repetitions (the best is reported, for both).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also run nimbus's GPU kernel (needs the `cuda` feature and an NVIDIA GPU).
        #[arg(long)]
        gpu: bool,
        /// The GPU reference's CUDA source (e.g. dcs_gpu.cu), built with nvcc and run beside it.
        #[arg(long, requires = "gpu")]
        gpu_reference: Option<PathBuf>,
        /// Skip the CPU kernels (with --gpu, on large n and m).
        #[arg(long)]
        no_cpu: bool,
    },
    /// Per-image inference time of the image model in tract (one thread), beside onnxruntime on
    /// the same ONNX file (`bench/onnxruntime_peer.py`).
    Model {
        #[command(flatten)]
        model: ModelArgs,
        /// The image to classify.
        #[arg(
            long,
            default_value = "/usr/lib/python3/dist-packages/skimage/data/chelsea.png"
        )]
        image: PathBuf,
        /// Timed inferences (the median is reported).
        #[arg(long, default_value_t = 30)]
        runs: usize,
    },
    /// The image service's workload generator: N requests over a directory of images, C at once;
    /// correct, wrong and failed answers, throughput, latency percentiles.
    Classify {
        /// The web tier.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// A directory of images (PNG, JPEG, GIF, BMP, WebP).
        #[arg(long)]
        images: PathBuf,
        /// Requests in all.
        #[arg(long, default_value_t = 100)]
        requests: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 10)]
        concurrency: usize,
        /// A CSV of `file,word|word`: an answer is correct when its top label contains a word.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Seconds each request may wait for its labels.
        #[arg(long, default_value_t = 60.0)]
        wait: f64,
    },
    /// The job listing and the job counts on a store of N jobs: by page and counters, beside
    /// reading every record.
    Jobs {
        /// Jobs in the store.
        #[arg(long, default_value_t = 100_000)]
        jobs: usize,
        /// Runs of each figure; the median is shown.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Seed 002's Animoto job: seconds per video for N images (fetched over HTTP from a local
    /// server), split between fetching, normalizing and encoding with ffmpeg.
    Video {
        /// Images per video, one row each.
        #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
        images: Vec<usize>,
        /// Runs per row; the median is shown.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Frame and image width.
        #[arg(long, default_value_t = 640)]
        width: u32,
        /// Frame and image height.
        #[arg(long, default_value_t = 480)]
        height: u32,
        /// The ffmpeg executable.
        #[arg(long, default_value = "ffmpeg")]
        ffmpeg: PathBuf,
    },
    /// Seed 002's experiments: efficiency of 1 to 16 slots on equal total work, and end-to-end
    /// throughput of no-op tasks through worker processes, beside the local pool and Celery.
    Tasks {
        /// Concurrency slots for the efficiency table.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
        slots: Vec<usize>,
        /// Scales the efficiency workloads (1.0: 10 x 1 s, 100 x 100 ms, 1000 x 10 ms).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Worker processes for the throughput table.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
        workers: Vec<usize>,
        /// No-op tasks per throughput run.
        #[arg(long, default_value_t = 10_000)]
        tasks: usize,
        /// Concurrency slots of each worker process in the throughput runs.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Skip the efficiency table.
        #[arg(long)]
        no_efficiency: bool,
        /// Also run Celery with Redis on the same tasks (needs `celery[redis]` and redis-server).
        #[arg(long)]
        celery: bool,
        /// When the workers free a finished task's slot (`recorded`, `finished`; a list runs
        /// the throughput table for each).
        #[arg(long, value_delimiter = ',', default_value = "finished")]
        free_slot: Vec<nimbus_worker::FreeSlot>,
    },
    /// A chaos run: `nimbus web` and worker processes under a mixed workload (shell tasks with
    /// counted effects, atoms jobs, classify requests) while workers, the web tier or everything
    /// are killed with -9, workers paused past their lease, and the disk filled; then every
    /// accepted task and job is checked (nothing lost, nothing doubled outside the documented
    /// window, right results, queues empty). Runs on a fresh embedded store of its own, or on
    /// the AWS deployment named by an aws:// --engine (after `nimbus aws up`). Fails when a
    /// check fails; the seed it prints replays the same faults.
    Chaos(ChaosArgs),
}

/// `nimbus bench chaos`.
#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// The seed of every random choice (default: a random one, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seconds of faults (the drain comes after).
    #[arg(long, default_value_t = 90, conflicts_with = "minutes")]
    pub seconds: u64,
    /// Minutes of faults, for a long run.
    #[arg(long)]
    pub minutes: Option<u64>,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Slots per worker.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// The workers' lease (a paused worker is held past it).
    #[arg(long, value_parser = duration, default_value = "2s")]
    pub visibility: Duration,
    /// Mean time between faults.
    #[arg(long, value_parser = duration, default_value = "3s")]
    pub fault_every: Duration,
    /// Mean time between task sessions.
    #[arg(long, value_parser = duration, default_value = "500ms")]
    pub session_every: Duration,
    /// Most tasks per session.
    #[arg(long, default_value_t = 40)]
    pub session_tasks: usize,
    /// Mean time between atoms jobs (0s: none).
    #[arg(long, value_parser = duration, default_value = "4s")]
    pub atoms_every: Duration,
    /// Mean time between classify requests (0s: none).
    #[arg(long, value_parser = duration, default_value = "3s")]
    pub classify_every: Duration,
    /// Poison tasks: each kills its worker on every run until the workers fail it for good
    /// (after 3 crashes, `nimbus worker --max-crashes`).
    #[arg(long, default_value_t = 1)]
    pub poison: usize,
    /// Receives before a task is dead-lettered (of a task queue the harness creates). At a fault
    /// every 3 s on three workers, a task that is not poison is received 5 times now and then
    /// (every delivery cut short by a kill or a pause); at 10 that no longer happens.
    #[arg(long, default_value_t = 10)]
    pub max_receives: u32,
    /// How close to a kill, pause or death of its worker a repeated effect must be to count as
    /// inside the documented window.
    #[arg(long, value_parser = duration, default_value = "1s")]
    pub window: Duration,
    /// How long the accepted work may take to finish after the faults stop.
    #[arg(long, value_parser = duration, default_value = "3m")]
    pub drain: Duration,
    /// No disk-full faults (they need root, for a size-limited tmpfs under the engine).
    #[arg(long)]
    pub no_disk_full: bool,
    /// The size of that tmpfs, in MiB.
    #[arg(long, default_value_t = 512)]
    pub disk_mib: u64,
    /// Images to classify (default: three of python3-skimage's sample photos; none found: no
    /// classify requests).
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// No classify requests.
    #[arg(long)]
    pub no_classify: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Keep the run's files (logs, the store) here instead of a temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also print the run as a row of docs/benchmarks.md's long-run table.
    #[arg(long)]
    pub markdown: bool,
}

/// `nimbus bench http`.
#[derive(Debug, Clone, Args)]
pub struct BenchHttpArgs {
    /// The URL loaded; with --scenario, the balancer's base URL (its paths come from --paths).
    pub url: String,
    /// Connections (closed loop: requests in flight; open loop: the most in flight). Default:
    /// 64, or 4 for the scenario.
    #[arg(long)]
    pub connections: Option<usize>,
    /// Open loop: requests per second, planned whatever the answers take (with --scenario, each
    /// phase's pace: 16.7 is the seed's 1,000 a minute).
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to load (default 10 s unless --requests).
    #[arg(long, value_parser = duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Requests in all.
    #[arg(long)]
    pub requests: Option<u64>,
    /// A built-in scenario: seed-003 (per path: --first requests, --pause, --second more).
    #[arg(long)]
    pub scenario: Option<String>,
    /// The scenario's paths, one cluster each.
    #[arg(long, value_delimiter = ',', default_value = "/cluster1,/cluster2")]
    pub paths: Vec<String>,
    /// The scenario's requests before the pause.
    #[arg(long, default_value_t = 1000)]
    pub first: u64,
    /// The scenario's requests after the pause.
    #[arg(long, default_value_t = 1500)]
    pub second: u64,
    /// The scenario's pause (the seed's one minute).
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub pause: Duration,
    /// The width of a time bucket in the figures (default: 10 s for the scenario, 1 s else).
    #[arg(long, value_parser = duration)]
    pub bucket: Option<Duration>,
    /// The longest wait for one answer.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub timeout: Duration,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write the report into this directory: report.json, report.txt, PNG charts, report.html.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of `KEY=` in a deployment file's environment lines.
    fn setting<'a>(file: &'a str, key: &str) -> &'a str {
        file.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= line"))
    }

    fn parses(role: &str, args: &str) {
        let argv = ["nimbus", role].into_iter().chain(args.split_whitespace());
        if let Err(e) = Cli::try_parse_from(argv) {
            panic!("`nimbus {role} {args}` does not parse: {e}");
        }
    }

    #[test]
    fn the_deployment_files_start_commands_that_exist() {
        let user_data = include_str!("../../../deploy/aws/user-data.yaml");
        assert!(user_data.starts_with("#cloud-config\n"));
        assert!(user_data.contains("nimbus-worker.service"));
        parses("worker", setting(user_data, "NIMBUS_WORKER_ARGS"));
        assert!(setting(user_data, "NIMBUS_ENGINE").starts_with("aws://?"));
        assert!(setting(user_data, "NIMBUS_BLOBS").starts_with("s3://"));
        let guide = include_str!("../../../docs/aws.md");
        parses("web", setting(guide, "NIMBUS_WEB_ARGS"));
        for unit in [
            include_str!("../../../deploy/aws/systemd/nimbus-worker.service"),
            include_str!("../../../deploy/aws/systemd/nimbus-web.service"),
        ] {
            assert!(unit.contains("ExecStart=/usr/local/bin/nimbus "));
            assert!(unit.contains("Restart=on-failure"));
            assert!(unit.contains("EnvironmentFile=/etc/nimbus/nimbus.env"));
        }
    }

    #[test]
    fn the_iam_policies_are_valid_json_with_statements() {
        for (role, policy) in [
            ("web", include_str!("../../../deploy/aws/iam/web.json")),
            (
                "worker",
                include_str!("../../../deploy/aws/iam/worker.json"),
            ),
            (
                "autoscaler",
                include_str!("../../../deploy/aws/iam/autoscaler.json"),
            ),
            ("admin", include_str!("../../../deploy/aws/iam/admin.json")),
        ] {
            let doc: serde_json::Value = serde_json::from_str(policy)
                .unwrap_or_else(|e| panic!("{role}.json is not JSON: {e}"));
            assert_eq!(doc["Version"], "2012-10-17", "{role}");
            let statements = doc["Statement"].as_array().unwrap();
            assert!(!statements.is_empty(), "{role}");
            for s in statements {
                assert_eq!(s["Effect"], "Allow", "{role}: {s}");
                assert!(
                    s["Action"].is_string() || s["Action"].is_array(),
                    "{role}: {s}"
                );
                assert!(
                    s["Resource"].is_string() || s["Resource"].is_array(),
                    "{role}: {s}"
                );
            }
        }
    }
}
