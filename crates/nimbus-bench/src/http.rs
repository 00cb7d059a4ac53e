//! `nimbus bench http`: an HTTP load generator. Closed loop (N connections, each sending its
//! next request when the last is answered) or open loop (a constant rate; a request held back
//! because the answers were slow is timed from when it was planned to be sent, so a stall is not
//! hidden by the requests it delayed: no coordinated omission). HdrHistogram percentiles; figures per time bucket, per
//! path and per target (the `x-nimbus-instance` header a cluster replica answers with); seed
//! 003's scenario built in.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::time::Instant;

/// The header a replica names itself in (nimbus-web's `INSTANCE_HEADER`).
pub const INSTANCE_HEADER: &str = "x-nimbus-instance";

/// What can go wrong before any figure is measured.
#[derive(Debug, thiserror::Error)]
pub enum HttpBenchError {
    /// The URL is not one this generator can load.
    #[error("{0}")]
    Url(String),
    /// Nothing answered.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
}

/// A target URL, split for the generator: plain HTTP/1.1.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `HOST:PORT` as sent in `Host`.
    pub authority: String,
    /// The socket address connected to.
    pub addr: SocketAddr,
    /// The path and query of the URL.
    pub path: String,
}

impl Endpoint {
    /// Parses `http://HOST:PORT/PATH`.
    pub fn parse(url: &str) -> Result<Self, HttpBenchError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| HttpBenchError::Url(format!("`{url}` is not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(HttpBenchError::Url(format!(
                "`{url}`: only http:// URLs are loaded (put the balancer's HTTP listener in front of HTTPS)"
            )));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| HttpBenchError::Url(format!("`{url}` has no host")))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| HttpBenchError::Url(format!("cannot resolve `{}`", authority.host())))?;
        Ok(Self {
            authority: authority.to_string(),
            addr,
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        })
    }

    /// The same host with another path.
    pub fn with_path(&self, path: &str) -> Self {
        Self {
            path: path.to_string(),
            ..self.clone()
        }
    }
}

/// How requests are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Each connection sends its next request when the last is answered.
    Closed,
    /// Requests are planned at this many per second, whatever the answers take.
    Open {
        /// Requests per second.
        rate: f64,
    },
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this many requests.
    Requests(u64),
    /// After this long.
    After(Duration),
}

/// One run of load.
#[derive(Debug, Clone)]
pub struct Load {
    /// Where to.
    pub endpoint: Endpoint,
    /// Closed or open loop.
    pub mode: Mode,
    /// Connections (closed loop: the concurrency).
    pub connections: usize,
    /// When it ends.
    pub stop: Stop,
    /// The longest wait for one answer.
    pub timeout: Duration,
}

/// A latency summary in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latencies {
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latencies {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Figures of one time bucket, path and target.
#[derive(Debug, Clone, Serialize)]
pub struct BucketRow {
    /// The bucket's start, seconds after the run's start.
    pub start_s: f64,
    /// The path loaded.
    pub path: String,
    /// The replica that answered (`-` when none said).
    pub target: String,
    /// Requests answered in it.
    pub requests: u64,
    /// Requests that failed or got a 5xx.
    pub errors: u64,
    /// Their latency.
    pub latency: Latencies,
}

/// The whole run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was loaded.
    pub url: String,
    /// `closed` or `open`.
    pub mode: String,
    /// Connections used.
    pub connections: usize,
    /// The planned rate (open loop).
    pub rate: Option<f64>,
    /// Seconds from the first request to the last answer.
    pub seconds: f64,
    /// Requests answered or failed.
    pub requests: u64,
    /// Requests that failed (no answer) or got a 5xx.
    pub errors: u64,
    /// Requests per second.
    pub requests_per_second: f64,
    /// Latency of all of them.
    pub latency: Latencies,
    /// Answers by status (`error` for none).
    pub statuses: BTreeMap<String, u64>,
    /// Requests by target.
    pub per_target: BTreeMap<String, u64>,
    /// The width of a bucket, in seconds.
    pub bucket_seconds: f64,
    /// Figures per bucket, path and target.
    pub buckets: Vec<BucketRow>,
}

/// 1 us to 10 min at 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("these bounds are valid")
}

#[derive(Default)]
struct Cell {
    requests: u64,
    errors: u64,
    latency: Option<Histogram<u64>>,
}

/// What one connection measured; merged at the end.
struct Recorder {
    started: Instant,
    bucket: Duration,
    all: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    failures: u64,
    errors: u64,
    targets: HashMap<String, u16>,
    cells: HashMap<(u32, u16, u16), Cell>,
    paths: Vec<String>,
    last: Instant,
}

impl Recorder {
    fn new(started: Instant, bucket: Duration, paths: Vec<String>) -> Self {
        Self {
            started,
            bucket,
            all: histogram(),
            statuses: BTreeMap::new(),
            failures: 0,
            errors: 0,
            targets: HashMap::new(),
            cells: HashMap::new(),
            paths,
            last: started,
        }
    }

    fn record(
        &mut self,
        path: u16,
        planned: Instant,
        done: Instant,
        answer: Option<(u16, Option<&str>)>,
    ) {
        let micros = u64::try_from(done.saturating_duration_since(planned).as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self.all.record(micros.min(600_000_000));
        self.last = self.last.max(done);
        let (failed, target) = match answer {
            Some((status, target)) => {
                *self.statuses.entry(status).or_default() += 1;
                (status >= 500, target.unwrap_or("-"))
            }
            None => {
                self.failures += 1;
                (true, "-")
            }
        };
        if failed {
            self.errors += 1;
        }
        let next = u16::try_from(self.targets.len()).unwrap_or(u16::MAX);
        let t = match self.targets.get(target) {
            Some(&t) => t,
            None => *self.targets.entry(target.to_string()).or_insert(next),
        };
        let bucket = u32::try_from(
            planned.saturating_duration_since(self.started).as_nanos()
                / self.bucket.as_nanos().max(1),
        )
        .unwrap_or(u32::MAX);
        let cell = self.cells.entry((bucket, path, t)).or_default();
        cell.requests += 1;
        cell.errors += u64::from(failed);
        let _ = cell
            .latency
            .get_or_insert_with(histogram)
            .record(micros.min(600_000_000));
    }

    fn merge(&mut self, other: Self) {
        let _ = self.all.add(&other.all);
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.failures += other.failures;
        self.errors += other.errors;
        self.last = self.last.max(other.last);
        let names: HashMap<u16, String> = other.targets.into_iter().map(|(k, v)| (v, k)).collect();
        for ((bucket, path, t), cell) in other.cells {
            let name = names.get(&t).cloned().unwrap_or_else(|| "-".into());
            let next = u16::try_from(self.targets.len()).unwrap_or(u16::MAX);
            let mine = *self.targets.entry(name).or_insert(next);
            let into = self.cells.entry((bucket, path, mine)).or_default();
            into.requests += cell.requests;
            into.errors += cell.errors;
            if let Some(h) = cell.latency {
                let _ = into.latency.get_or_insert_with(histogram).add(&h);
            }
        }
    }

    fn report(&self, url: &str, mode: Mode, connections: usize) -> Report {
        let names: HashMap<u16, &str> =
            self.targets.iter().map(|(k, &v)| (v, k.as_str())).collect();
        let mut buckets: Vec<BucketRow> = self
            .cells
            .iter()
            .map(|(&(b, p, t), cell)| BucketRow {
                start_s: self.bucket.as_secs_f64() * f64::from(b),
                path: self.paths.get(usize::from(p)).cloned().unwrap_or_default(),
                target: names.get(&t).copied().unwrap_or("-").to_string(),
                requests: cell.requests,
                errors: cell.errors,
                latency: cell.latency.as_ref().map(Latencies::of).unwrap_or_default(),
            })
            .collect();
        buckets.sort_by(|a, b| {
            (a.path.as_str(), a.start_s, a.target.as_str())
                .partial_cmp(&(b.path.as_str(), b.start_s, b.target.as_str()))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let mut per_target = BTreeMap::new();
        for row in &buckets {
            *per_target.entry(row.target.clone()).or_default() += row.requests;
        }
        let mut statuses: BTreeMap<String, u64> = self
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect();
        if self.failures > 0 {
            statuses.insert("error".into(), self.failures);
        }
        let seconds = self
            .last
            .saturating_duration_since(self.started)
            .as_secs_f64();
        let requests = self.all.len();
        Report {
            url: url.to_string(),
            mode: match mode {
                Mode::Closed => "closed".into(),
                Mode::Open { .. } => "open".into(),
            },
            connections,
            rate: match mode {
                Mode::Open { rate } => Some(rate),
                Mode::Closed => None,
            },
            seconds,
            requests,
            errors: self.errors,
            requests_per_second: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            latency: Latencies::of(&self.all),
            statuses,
            per_target,
            bucket_seconds: self.bucket.as_secs_f64(),
            buckets,
        }
    }
}

/// A keep-alive HTTP/1.1 connection, made again after a failure.
struct Connection {
    endpoint: Endpoint,
    sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
}

impl Connection {
    /// One request; a kept-alive connection the server closed meanwhile is made again once.
    async fn send(&mut self, path: &str, timeout: Duration) -> Option<(u16, Option<String>)> {
        let reused = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        let answer = tokio::time::timeout(timeout, self.exchange(path))
            .await
            .ok()
            .flatten();
        if answer.is_none() {
            self.sender = None;
            if reused {
                return tokio::time::timeout(timeout, self.exchange(path))
                    .await
                    .ok()
                    .flatten();
            }
        }
        answer
    }

    async fn exchange(&mut self, path: &str) -> Option<(u16, Option<String>)> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(self.endpoint.addr)
                .await
                .ok()?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .ok()?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut()?;
        sender.ready().await.ok()?;
        let request = http::Request::get(path)
            .header(http::header::HOST, &self.endpoint.authority)
            .body(Empty::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        let target = response
            .headers()
            .get(INSTANCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        response.into_body().collect().await.ok()?;
        Some((status, target))
    }
}

/// Runs `load` from a shared start; returns what it measured.
async fn run_into(
    load: &Load,
    path_index: u16,
    recorder_template: (Instant, Duration, Vec<String>),
) -> Recorder {
    let (started, bucket, paths) = recorder_template;
    let issued = Arc::new(AtomicU64::new(0));
    let run_start = Instant::now();
    let deadline = match load.stop {
        Stop::After(d) => Some(run_start + d),
        Stop::Requests(_) => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..load.connections.max(1) {
        let (load, issued, paths) = (load.clone(), issued.clone(), paths.clone());
        tasks.spawn(async move {
            let mut recorder = Recorder::new(started, bucket, paths);
            let mut connection = Connection {
                endpoint: load.endpoint.clone(),
                sender: None,
            };
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if let Stop::Requests(n) = load.stop {
                    if i >= n {
                        break;
                    }
                }
                let planned = match load.mode {
                    Mode::Closed => Instant::now(),
                    Mode::Open { rate } => {
                        let offset =
                            Duration::try_from_secs_f64(i as f64 / rate).unwrap_or(Duration::MAX);
                        let Some(at) = run_start.checked_add(offset) else {
                            break;
                        };
                        // Planned past the end: stop now rather than sleep until then.
                        if deadline.is_some_and(|d| at >= d) {
                            break;
                        }
                        if Instant::now() < at {
                            // Free before its time: the request starts when the timer wakes this
                            // task (its ~1 ms lateness is the generator's, not the server's).
                            tokio::time::sleep_until(at).await;
                            Instant::now()
                        } else {
                            // Late because the answers were slow: timed from the plan, so a
                            // stall counts in every request it held back.
                            at
                        }
                    }
                };
                if deadline.is_some_and(|d| planned >= d) && load.mode == Mode::Closed {
                    break;
                }
                let answer = connection.send(&load.endpoint.path, load.timeout).await;
                recorder.record(
                    path_index,
                    planned,
                    Instant::now(),
                    answer.as_ref().map(|(s, t)| (*s, t.as_deref())),
                );
            }
            recorder
        });
    }
    let mut total = Recorder::new(started, bucket, paths);
    while let Some(done) = tasks.join_next().await {
        if let Ok(r) = done {
            total.merge(r);
        }
    }
    total
}

/// Checks that something answers at `endpoint`.
pub async fn reachable(endpoint: &Endpoint) -> Result<(), HttpBenchError> {
    tokio::net::TcpStream::connect(endpoint.addr)
        .await
        .map(drop)
        .map_err(|e| HttpBenchError::Connect(endpoint.authority.clone(), e))
}

/// Runs one load and reports it, with buckets `bucket` wide.
pub async fn run(load: &Load, bucket: Duration) -> Result<Report, HttpBenchError> {
    reachable(&load.endpoint).await?;
    let started = Instant::now();
    let recorder = run_into(load, 0, (started, bucket, vec![load.endpoint.path.clone()])).await;
    let url = format!("http://{}{}", load.endpoint.authority, load.endpoint.path);
    Ok(recorder.report(&url, load.mode, load.connections))
}

/// Seed 003's benchmark: for each path, `first` requests, a pause, `second` more; paths one
/// after the other.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The balancer.
    pub base: Endpoint,
    /// The clusters' paths.
    pub paths: Vec<String>,
    /// Requests before the pause.
    pub first: u64,
    /// Requests after it.
    pub second: u64,
    /// The pause (the seed's one minute).
    pub pause: Duration,
    /// Connections sending at once.
    pub connections: usize,
    /// Closed loop (as fast as answers come), or paced at a rate (the seed's client sent about
    /// 1,000 requests a minute).
    pub mode: Mode,
    /// The longest wait for one answer.
    pub timeout: Duration,
}

/// Runs `scenario`, reporting progress through `progress` (a line per phase).
pub async fn run_scenario(
    scenario: &Scenario,
    bucket: Duration,
    progress: impl Fn(&str),
) -> Result<Report, HttpBenchError> {
    reachable(&scenario.base).await?;
    let started = Instant::now();
    let mut total = Recorder::new(started, bucket, scenario.paths.clone());
    for (i, path) in scenario.paths.iter().enumerate() {
        let index = u16::try_from(i).unwrap_or(u16::MAX);
        for (phase, count) in [("first", scenario.first), ("second", scenario.second)] {
            if phase == "second" && !scenario.pause.is_zero() {
                progress(&format!("{path}: pausing {:?}", scenario.pause));
                tokio::time::sleep(scenario.pause).await;
            }
            progress(&format!("{path}: {count} requests"));
            let load = Load {
                endpoint: scenario.base.with_path(path),
                mode: scenario.mode,
                connections: scenario.connections,
                stop: Stop::Requests(count),
                timeout: scenario.timeout,
            };
            let r = run_into(&load, index, (started, bucket, scenario.paths.clone())).await;
            total.merge(r);
        }
    }
    let url = format!(
        "http://{}{{{}}}",
        scenario.base.authority,
        scenario.paths.join(",")
    );
    Ok(total.report(&url, scenario.mode, scenario.connections))
}

/// The report as a plain-text table: the summary, then per path and target, per bucket.
pub fn table(report: &Report) -> String {
    use std::fmt::Write;
    let l = &report.latency;
    let mut out =
        format!(
        "{} ({} loop, {} connections{}): {} requests in {:.2} s = {:.0} requests/s, {} errors\n\
         latency ms: mean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
        report.url,
        report.mode,
        report.connections,
        report.rate.map(|r| format!(", {r} requests/s planned")).unwrap_or_default(),
        report.requests,
        report.seconds,
        report.requests_per_second,
        report.errors,
        l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
    );
    let _ = writeln!(out, "statuses: {:?}", report.statuses);
    if report.per_target.keys().any(|t| t != "-") {
        let _ = writeln!(out, "per target: {:?}", report.per_target);
    }
    let _ = writeln!(
        out,
        "\n{:>8} {:<12} {:<14} {:>8} {:>7} {:>9} {:>9} {:>9}",
        "start s", "path", "target", "requests", "errors", "mean ms", "p50 ms", "p99 ms"
    );
    for row in &report.buckets {
        let _ = writeln!(
            out,
            "{:>8.0} {:<12} {:<14} {:>8} {:>7} {:>9.2} {:>9.2} {:>9.2}",
            row.start_s,
            row.path,
            row.target,
            row.requests,
            row.errors,
            row.latency.mean_ms,
            row.latency.p50_ms,
            row.latency.p99_ms
        );
    }
    out
}
