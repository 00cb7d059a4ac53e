//! `nimbus bench classify`: the seed's workload generator for the image service. Sends N
//! requests (one image each, cycling through a directory) with C in flight, and reports correct,
//! wrong and failed answers, throughput and latency percentiles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

/// What to send.
#[derive(Debug, Clone)]
pub struct ClassifyBench {
    /// The web tier, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// The images, cycled through.
    pub images: Vec<(String, Bytes)>,
    /// Requests in all.
    pub requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Expected words by file name: an answer is correct when its top label contains one.
    pub expect: BTreeMap<String, Vec<String>>,
    /// Seconds each request may wait for its labels.
    pub wait: f64,
}

/// What came back.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Answers whose top label matched the expectation (or any answer without one).
    pub correct: usize,
    /// Answers with another top label.
    pub wrong: usize,
    /// Requests that got no labels (an error status, a timeout, a broken connection).
    pub failed: usize,
    /// The first few failures.
    pub errors: Vec<String>,
    /// The first few wrong answers.
    pub mistakes: Vec<String>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Each request's latency, sorted.
    pub latencies: Vec<Duration>,
}

impl Report {
    /// The latency at quantile `q` (0 to 1).
    pub fn percentile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies[((self.latencies.len() - 1) as f64 * q).round() as usize]
    }
}

/// Image files of a directory (PNG, JPEG, GIF, BMP, WebP), sorted by name.
pub fn load_images(dir: &Path) -> std::io::Result<Vec<(String, Bytes)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                ["png", "jpg", "jpeg", "gif", "bmp", "webp"]
                    .contains(&e.to_ascii_lowercase().as_str())
            })
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, Bytes::from(std::fs::read(&p)?)))
        })
        .collect()
}

/// Reads `file,word|word` lines (the header line and blank lines are skipped).
pub fn parse_expectations(text: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut map = BTreeMap::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (no == 0 && line.starts_with("file,")) {
            continue;
        }
        let (file, words) = line
            .split_once(',')
            .ok_or_else(|| format!("line {}: expected `file,word|word`", no + 1))?;
        map.insert(
            file.trim().to_string(),
            words.split('|').map(|w| w.trim().to_lowercase()).collect(),
        );
    }
    Ok(map)
}

enum Outcome {
    Label(String),
    Failed(String),
}

impl ClassifyBench {
    /// Runs the requests.
    pub async fn run(&self) -> Report {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let slots = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(self.requests);
        for i in 0..self.requests {
            let (name, bytes) = self.images[i % self.images.len()].clone();
            let uri = format!(
                "{}/api/v1/classify?wait={}&name={}",
                self.url.trim_end_matches('/'),
                self.wait,
                name
            );
            let (client, slots) = (client.clone(), slots.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                let t = Instant::now();
                let outcome = request(&client, &uri, bytes).await;
                (name, outcome, t.elapsed())
            }));
        }
        let mut report = Report::default();
        for t in tasks {
            let Ok((name, outcome, latency)) = t.await else {
                report.failed += 1;
                continue;
            };
            report.latencies.push(latency);
            match outcome {
                Outcome::Label(label) => {
                    let ok = self
                        .expect
                        .get(&name)
                        .is_none_or(|words| words.iter().any(|w| label.to_lowercase().contains(w)));
                    if ok {
                        report.correct += 1;
                    } else {
                        report.wrong += 1;
                        if report.mistakes.len() < 5 {
                            report.mistakes.push(format!("{name}: {label}"));
                        }
                    }
                }
                Outcome::Failed(e) => {
                    report.failed += 1;
                    if report.errors.len() < 5 {
                        report.errors.push(format!("{name}: {e}"));
                    }
                }
            }
        }
        report.elapsed = started.elapsed();
        report.latencies.sort();
        report
    }
}

async fn request<C>(client: &Client<C, Full<Bytes>>, uri: &str, bytes: Bytes) -> Outcome
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let request = match hyper::Request::post(uri)
        .header("content-type", "application/octet-stream")
        .body(Full::new(bytes))
    {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let response = match client.request(request).await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("request failed: {e}")),
    };
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Outcome::Failed(format!("reading the answer failed: {e}")),
    };
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status != hyper::StatusCode::OK {
        return Outcome::Failed(format!(
            "{status}: {}",
            json.get("error")
                .or(json.get("message"))
                .and_then(|e| e.as_str())
                .unwrap_or("")
        ));
    }
    match json
        .pointer("/images/0/labels/0/label")
        .and_then(|l| l.as_str())
    {
        Some(label) => Outcome::Label(label.to_string()),
        None => Outcome::Failed(format!("no label in {json}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_and_percentiles() {
        let e = parse_expectations("file,words\nchelsea.png,cat|tabby\n\ncoffee.png, espresso\n")
            .unwrap();
        assert_eq!(e["chelsea.png"], ["cat", "tabby"]);
        assert_eq!(e["coffee.png"], ["espresso"]);
        assert!(parse_expectations("x.png\n").is_err());
        let r = Report {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            ..Report::default()
        };
        assert_eq!(r.percentile(0.5), Duration::from_millis(51));
        assert_eq!(r.percentile(1.0), Duration::from_millis(100));
    }
}
