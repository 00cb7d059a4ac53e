//! Seed 002's Animoto job: a list of images (URLs, or blob keys of uploads) becomes an H.264 MP4.
//! The web tier validates the parameters and queues one message on `video`; a worker fetches
//! each image ([`fetch`]: allow-list, private addresses, size, time and redirect limits), checks
//! and fits it into the frame, runs ffmpeg ([`encode`]) in a temporary directory of its own that
//! is removed whatever happens, stores the MP4 in blobs (`jobs/<id>/video.mp4`) and ends the job,
//! publishing progress per image and per encoding step. The same [`VideoRunner`] makes a
//! video for a task line `video {...}` of `nimbus tasks submit`.

pub mod encode;
pub mod fetch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use nimbus_core::task::{ATTR_KIND, ATTR_TASK_ID};
use nimbus_core::{Engine, Error, ErrorKind, Job, JobEvent, OutgoingMessage, QueueName, Result};
use nimbus_scale::process::RunError;
use nimbus_worker::{Handler, Outcome, TaskContext};
use object_store::path::Path as BlobPath;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::jobs::{blob_error, JobStore};
pub use encode::Encoding;
pub use fetch::{AllowEntry, FetchError, FetchPolicy, Fetcher};

/// The job kind and the handler kind.
pub const KIND: &str = "video";
/// Where video jobs go.
pub const QUEUE: &str = "video";
/// Where uploaded images are kept; a job's `keys` must lie under it.
pub const UPLOADS: &str = "uploads/";

/// A video job's parameters, as `POST /api/v1/jobs` takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoParams {
    /// Image URLs, fetched by the worker (its `--allow-fetch` list decides which hosts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Blob keys of uploaded images (under `uploads/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// How long each image shows, in seconds.
    #[serde(default = "default_frame_seconds")]
    pub frame_seconds: f64,
    /// Frame width in pixels (even).
    #[serde(default = "default_width")]
    pub width: u32,
    /// Frame height in pixels (even).
    #[serde(default = "default_height")]
    pub height: u32,
    /// How long each cross-fade into the next image lasts, in seconds (0: cuts).
    #[serde(default)]
    pub crossfade_seconds: f64,
    /// Frames per second when cross-fading.
    #[serde(default = "default_fps")]
    pub fps: u32,
}

fn default_frame_seconds() -> f64 {
    1.0
}
fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}
fn default_fps() -> u32 {
    25
}

/// Bounds on video jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoLimits {
    /// The most images in one job.
    pub max_images: usize,
    /// The largest frame.
    pub max_width: u32,
    /// The largest frame.
    pub max_height: u32,
    /// The longest video, in seconds.
    pub max_seconds: u32,
}

impl Default for VideoLimits {
    fn default() -> Self {
        Self {
            max_images: 500,
            max_width: 1920,
            max_height: 1080,
            max_seconds: 3600,
        }
    }
}

/// How many times an image is fetched before its failure fails the job.
const FETCH_TRIES: u32 = 3;
/// The shortest time an image may show (one frame at 25 frames per second).
const MIN_FRAME_SECONDS: f64 = 0.04;
/// The longest time an image may show.
const MAX_FRAME_SECONDS: f64 = 60.0;
/// The longest URL accepted.
const MAX_URL: usize = 2048;

impl VideoParams {
    /// How many images.
    pub fn images(&self) -> usize {
        self.urls.len() + self.keys.len()
    }

    /// Checks every parameter against `limits`; the error names the field and its bounds.
    pub fn validate(&self, limits: &VideoLimits) -> std::result::Result<Encoding, String> {
        let n = self.images();
        if !self.urls.is_empty() && !self.keys.is_empty() {
            return Err("give `urls` or `keys`, not both".into());
        }
        if n == 0 {
            return Err("no images: give `urls` (a list of image URLs) or `keys` (uploads)".into());
        }
        if n > limits.max_images {
            return Err(format!(
                "{n} images is over the limit of {} a video",
                limits.max_images
            ));
        }
        for (i, url) in self.urls.iter().enumerate() {
            check_url(url).map_err(|e| format!("urls[{i}]: {e}"))?;
        }
        for (i, key) in self.keys.iter().enumerate() {
            check_key(key).map_err(|e| format!("keys[{i}]: {e}"))?;
        }
        let fs = self.frame_seconds;
        if !fs.is_finite() || !(MIN_FRAME_SECONDS..=MAX_FRAME_SECONDS).contains(&fs) {
            return Err(format!(
                "frame_seconds {fs} is outside {MIN_FRAME_SECONDS} to {MAX_FRAME_SECONDS}"
            ));
        }
        let cf = self.crossfade_seconds;
        if !cf.is_finite() || cf < 0.0 || cf >= fs {
            return Err(format!(
                "crossfade_seconds {cf} must be at least 0 and less than frame_seconds ({fs})"
            ));
        }
        let even_within = |name: &str, v: u32, max: u32| {
            if v < 16 || v > max || v % 2 == 1 {
                Err(format!("{name} {v} must be even and within 16 to {max}"))
            } else {
                Ok(())
            }
        };
        even_within("width", self.width, limits.max_width)?;
        even_within("height", self.height, limits.max_height)?;
        if !(1..=60).contains(&self.fps) {
            return Err(format!("fps {} is outside 1 to 60", self.fps));
        }
        let frames_per_image = fs * f64::from(self.fps);
        if cf > 0.0 && (frames_per_image - frames_per_image.round()).abs() > 1e-6 {
            return Err(format!(
                "with a cross-fade, frame_seconds x fps ({fs} x {}) must be a whole number of frames",
                self.fps
            ));
        }
        let frame_bytes = n as u64 * u64::from(self.width) * u64::from(self.height) * 3;
        if frame_bytes > encode::MAX_FRAME_BYTES {
            return Err(format!(
                "{n} frames of {} x {} take {} MiB, over the limit of {} MiB a video: fewer images or a smaller frame",
                self.width,
                self.height,
                frame_bytes >> 20,
                encode::MAX_FRAME_BYTES >> 20
            ));
        }
        let seconds = fs * n as f64;
        if seconds > f64::from(limits.max_seconds) {
            return Err(format!(
                "{n} images of {fs} s make {seconds} s, over the limit of {} s a video",
                limits.max_seconds
            ));
        }
        let crossfade_ms = (cf * 1000.0).round() as u32;
        Ok(Encoding {
            images: n,
            frame_ms: (fs * 1000.0).round() as u32,
            crossfade_ms,
            fps: self.fps,
            frames_per_image: if crossfade_ms == 0 {
                1
            } else {
                frames_per_image.round() as u32
            },
            width: self.width,
            height: self.height,
        })
    }
}

fn check_url(url: &str) -> std::result::Result<(), String> {
    if url.len() > MAX_URL {
        return Err(format!("a URL of {} bytes is over {MAX_URL}", url.len()));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{url}`: only http and https URLs are fetched"));
    }
    Ok(())
}

/// Whether `key` names an upload: under `uploads/`, no empty, `.` or `..` segment, no
/// backslash or control character.
pub fn check_key(key: &str) -> std::result::Result<(), String> {
    let rest = key
        .strip_prefix(UPLOADS)
        .ok_or_else(|| format!("blob key `{key}` is not under {UPLOADS}"))?;
    let bad = rest.is_empty()
        || key.len() > 512
        || key.chars().any(|c| c.is_control() || c == '\\')
        || rest
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        return Err(format!(
            "blob key `{}` is not a valid upload key",
            key.escape_debug()
        ));
    }
    Ok(())
}

/// How a video was made, in its job's result (and a task's log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoResult {
    /// Where to get it.
    pub video: String,
    /// Its blob key.
    pub key: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// How many images.
    pub images: usize,
    /// How many frames.
    pub frames: u64,
    /// Its length in seconds.
    pub seconds: f64,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Time spent fetching the images (wall clock, fetched concurrently).
    pub fetch_ms: u64,
    /// Time spent decoding and fitting them into frames.
    pub normalize_ms: u64,
    /// Time spent in ffmpeg.
    pub encode_ms: u64,
}

/// What a worker needs to make videos.
#[derive(Debug, Clone)]
pub struct VideoOptions {
    /// The ffmpeg executable (a name looked up on PATH, or a path).
    pub ffmpeg: PathBuf,
    /// What may be fetched.
    pub fetch: FetchPolicy,
    /// Where temporary directories go (the system's by default).
    pub work_dir: Option<PathBuf>,
    /// The longest ffmpeg may run for one video.
    pub encode_timeout: Duration,
    /// Bounds on parameters, checked again on the worker.
    pub limits: VideoLimits,
    /// How many images are fetched at once.
    pub fetch_concurrency: usize,
    /// The most bytes of images one video holds in memory (all its images, as fetched).
    pub max_total_bytes: u64,
}

impl Default for VideoOptions {
    fn default() -> Self {
        Self {
            ffmpeg: PathBuf::from("ffmpeg"),
            fetch: FetchPolicy::default(),
            work_dir: None,
            encode_timeout: Duration::from_secs(600),
            limits: VideoLimits::default(),
            fetch_concurrency: 8,
            max_total_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Why a video could not be made: `Refused` for bad input (the job fails with the message),
/// `Engine` for the engine's errors (retried when retryable).
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// Bad input, a refused or failed fetch, or ffmpeg's failure: the job fails with this.
    #[error("{0}")]
    Refused(String),
    /// Stopped by the cancel token (job cancelled, or the worker giving the task up).
    #[error("stopped: cancelled")]
    Cancelled,
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] Error),
}

/// Steps reported while a video is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Image `index` was fetched.
    Fetched(usize),
    /// Image `index` was checked and fitted into its frame.
    Normalized(usize),
    /// ffmpeg has encoded this many frames.
    Encoded(u64),
    /// The MP4 is stored.
    Stored,
}

/// Progress units of a video of `n` images: one per image fetched, one per image normalized,
/// `n` for the encoding (spread over its frames) and one for storing.
pub fn progress_total(n: usize) -> u64 {
    3 * n as u64 + 1
}

/// Makes videos: fetch, normalize, encode, store.
#[derive(Debug, Clone)]
pub struct VideoRunner {
    engine: Engine,
    options: Arc<VideoOptions>,
    fetcher: Fetcher,
}

impl VideoRunner {
    /// A runner over `engine` with `options`.
    pub fn new(engine: Engine, options: VideoOptions) -> std::result::Result<Self, String> {
        let fetcher = options.fetch.client().map_err(|e| e.to_string())?;
        Ok(Self {
            engine,
            options: Arc::new(options),
            fetcher,
        })
    }

    /// Makes the video of `params`, stores it at `key` and says how; `progress` hears each step.
    pub async fn make(
        &self,
        params: &VideoParams,
        key: &str,
        cancel: &CancellationToken,
        progress: &(dyn Fn(Step) + Send + Sync),
    ) -> std::result::Result<VideoResult, VideoError> {
        let encoding = params
            .validate(&self.options.limits)
            .map_err(VideoError::Refused)?;
        let dir = self.work_dir()?;
        let started = Instant::now();
        let inputs = self.fetch_all(params, cancel, progress).await?;
        let fetch_ms = elapsed_ms(started);
        let started = Instant::now();
        self.normalize_all(inputs, &encoding, dir.path(), cancel, progress)
            .await?;
        let normalize_ms = elapsed_ms(started);
        let started = Instant::now();
        let out = encode::encode(
            &self.options.ffmpeg,
            &encoding,
            dir.path(),
            self.options.encode_timeout,
            cancel,
            |frames| progress(Step::Encoded(frames)),
        )
        .await
        .map_err(|e| self.encode_error(e))?;
        let encode_ms = elapsed_ms(started);
        let mp4 = tokio::fs::read(&out)
            .await
            .map_err(|e| VideoError::Refused(format!("ffmpeg wrote no video: {e}")))?;
        let bytes = mp4.len() as u64;
        self.engine
            .blobs
            .put(&BlobPath::from(key), Bytes::from(mp4).into())
            .await
            .map_err(blob_error)?;
        progress(Step::Stored);
        Ok(VideoResult {
            video: String::new(),
            key: key.to_string(),
            bytes,
            images: encoding.images,
            frames: encoding.frames(),
            seconds: encoding.seconds(),
            width: encoding.width,
            height: encoding.height,
            fetch_ms,
            normalize_ms,
            encode_ms,
        })
    }

    fn work_dir(&self) -> std::result::Result<tempfile::TempDir, VideoError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("nimbus-video-");
        let made = match &self.options.work_dir {
            Some(dir) => builder.tempdir_in(dir),
            None => builder.tempdir(),
        };
        made.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot make a temporary directory: {e}"),
            )
            .into()
        })
    }

    fn encode_error(&self, e: RunError) -> VideoError {
        match e {
            RunError::Cancelled { .. } => VideoError::Cancelled,
            RunError::Spawn { program, source } => VideoError::Refused(format!(
                "cannot start ffmpeg (`{program}`): {source}; install it (Debian: apt install ffmpeg) or give the worker --ffmpeg PATH"
            )),
            other => VideoError::Refused(format!("encoding failed: {other}")),
        }
    }

    /// Every image's bytes, in order, fetched a few at a time.
    async fn fetch_all(
        &self,
        params: &VideoParams,
        cancel: &CancellationToken,
        progress: &(dyn Fn(Step) + Send + Sync),
    ) -> std::result::Result<Vec<Bytes>, VideoError> {
        let sources: Vec<Source> = params
            .urls
            .iter()
            .map(|u| Source::Url(u.clone()))
            .chain(params.keys.iter().map(|k| Source::Upload(k.clone())))
            .collect();
        let mut pending = sources.into_iter().enumerate();
        let mut running = futures::stream::FuturesUnordered::new();
        let mut inputs = vec![Bytes::new(); params.images()];
        let width = self.options.fetch_concurrency.max(1);
        let (mut total, max_total) = (0u64, self.options.max_total_bytes);
        loop {
            while running.len() < width {
                let Some((i, source)) = pending.next() else {
                    break;
                };
                running.push(self.fetch_one(i, source));
            }
            tokio::select! {
                next = running.next() => match next {
                    Some(got) => {
                        let (i, bytes) = got?;
                        total += bytes.len() as u64;
                        if total > max_total {
                            return Err(VideoError::Refused(format!(
                                "the images of this video are over the limit of {max_total} bytes in all"
                            )));
                        }
                        progress(Step::Fetched(i));
                        inputs[i] = bytes;
                    }
                    None => return Ok(inputs),
                },
                () = cancel.cancelled() => return Err(VideoError::Cancelled),
            }
        }
    }

    /// Image `i`'s bytes; an error names the image.
    async fn fetch_one(
        &self,
        i: usize,
        source: Source,
    ) -> std::result::Result<(usize, Bytes), VideoError> {
        let got = match &source {
            Source::Url(url) => self.fetch_with_retries(url).await,
            Source::Upload(key) => self.read_upload(key).await,
        };
        match got {
            Ok(bytes) => Ok((i, bytes)),
            Err(VideoError::Refused(m)) => {
                Err(VideoError::Refused(format!("image {}: {m}", i + 1)))
            }
            Err(other) => Err(other),
        }
    }

    /// `url`'s body, tried again (twice, after 0.5 s and 1 s) when the failure may pass.
    async fn fetch_with_retries(&self, url: &str) -> std::result::Result<Bytes, VideoError> {
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=FETCH_TRIES {
            match self.fetcher.get(url).await {
                Ok(bytes) => return Ok(bytes),
                Err(FetchError::Unavailable(why)) if attempt < FETCH_TRIES => {
                    tracing::debug!(url, attempt, error = %why, "fetch failed; trying again");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(FetchError::Unavailable(why)) => {
                    return Err(VideoError::Refused(format!("{why} ({FETCH_TRIES} tries)")))
                }
                Err(e) => return Err(VideoError::Refused(e.to_string())),
            }
        }
        Err(VideoError::Refused(format!("`{url}`: not fetched")))
    }

    async fn read_upload(&self, key: &str) -> std::result::Result<Bytes, VideoError> {
        check_key(key).map_err(VideoError::Refused)?;
        let path = BlobPath::from(key);
        let max = self.options.fetch.max_bytes;
        match self.engine.blobs.head(&path).await {
            Ok(meta) if meta.size > max => {
                return Err(VideoError::Refused(format!(
                    "upload `{key}` is over the limit of {max} bytes"
                )))
            }
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {
                return Err(VideoError::Refused(format!(
                    "upload `{key}` does not exist"
                )))
            }
            Err(e) => return Err(blob_error(e).into()),
        }
        let got = self.engine.blobs.get(&path).await.map_err(blob_error)?;
        Ok(got.bytes().await.map_err(blob_error)?)
    }

    /// Decodes and fits every image into its frame and writes the frames, on all cores.
    async fn normalize_all(
        &self,
        inputs: Vec<Bytes>,
        encoding: &Encoding,
        dir: &std::path::Path,
        cancel: &CancellationToken,
        progress: &(dyn Fn(Step) + Send + Sync),
    ) -> std::result::Result<(), VideoError> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (width, height) = (encoding.width, encoding.height);
        let inputs = Arc::new(inputs);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..threads.min(inputs.len()) {
            let (inputs, next, done_tx, dir) = (
                inputs.clone(),
                next.clone(),
                done_tx.clone(),
                dir.to_path_buf(),
            );
            let cancel = cancel.clone();
            tokio::task::spawn_blocking(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= inputs.len() || cancel.is_cancelled() {
                    return;
                }
                let made = encode::normalize(&inputs[i], width, height)
                    .map_err(|e| VideoError::Refused(format!("image {}: {e}", i + 1)))
                    .and_then(|frame| {
                        encode::write_frame(&dir, i, &frame).map_err(|e| {
                            VideoError::Engine(Error::new(
                                ErrorKind::Unavailable,
                                format!("cannot write a frame: {e}"),
                            ))
                        })
                    });
                let failed = made.is_err();
                if done_tx.send((i, made)).is_err() || failed {
                    return;
                }
            });
        }
        drop(done_tx);
        let (mut first_error, mut made_frames) = (None, 0);
        while let Some((i, made)) = done_rx.recv().await {
            match made {
                Ok(()) => {
                    made_frames += 1;
                    progress(Step::Normalized(i));
                }
                Err(e) => {
                    // The earliest image's error, so the message does not depend on timing.
                    cancel_others(&next, inputs.len());
                    if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
                        first_error = Some((i, e));
                    }
                }
            }
        }
        if cancel.is_cancelled() {
            return Err(VideoError::Cancelled);
        }
        match first_error {
            Some((_, e)) => Err(e),
            // A thread that panicked drops its sender without a word: never encode a gap.
            None if made_frames < inputs.len() => Err(VideoError::Engine(Error::internal(
                "a frame could not be made (its thread failed)",
            ))),
            None => Ok(()),
        }
    }
}

/// Where an image comes from.
#[derive(Debug, Clone)]
enum Source {
    Url(String),
    Upload(String),
}

/// Makes the normalizing threads stop taking images.
fn cancel_others(next: &std::sync::atomic::AtomicUsize, len: usize) {
    next.store(len, Ordering::Relaxed);
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The blob key of a job's video.
pub fn video_key(job_id: &str) -> String {
    format!("jobs/{job_id}/video.mp4")
}

#[derive(Debug, Serialize, Deserialize)]
struct VideoMessage {
    job_id: String,
}

/// Creates a video job for `params` (already validated by the caller against its limits) and
/// queues it.
pub async fn submit(store: &JobStore, params: &VideoParams) -> Result<Job> {
    let value = serde_json::to_value(params)
        .map_err(|e| Error::internal("cannot encode").with_source(e))?;
    let job = JobStore::new_job(KIND, value, progress_total(params.images()));
    store.create(&job).await?;
    let body = serde_json::to_vec(&VideoMessage {
        job_id: job.id.clone(),
    })
    .map_err(|e| Error::internal("cannot encode").with_source(e))?;
    let message = OutgoingMessage::new(body)
        .attribute(ATTR_KIND, KIND)
        .attribute(ATTR_TASK_ID, format!("{}/video", job.id));
    if let Err(e) = store
        .engine()
        .queue
        .send(&QueueName::new(QUEUE)?, message)
        .await
    {
        store
            .fail(&job.id, &format!("could not queue the job: {e}"))
            .await?;
        return Err(e);
    }
    Ok(job)
}

/// Runs video jobs.
#[derive(Debug, Clone)]
pub struct VideoHandler {
    store: JobStore,
    runner: VideoRunner,
}

impl VideoHandler {
    /// A handler making videos with `runner`.
    pub fn new(store: JobStore, runner: VideoRunner) -> Self {
        Self { store, runner }
    }

    async fn run(&self, job_id: &str, task: &TaskContext) -> std::result::Result<(), VideoError> {
        let job = self.store.get(job_id).await?;
        if job.state.is_terminal() {
            return Ok(());
        }
        let params: VideoParams = serde_json::from_value(job.params.clone())
            .map_err(|e| VideoError::Refused(format!("job parameters: {e}")))?;
        self.store.start(job_id).await?;
        let total = job.progress.total;
        let reporter = Reporter::new(self.store.clone(), job_id, job.progress.done, total);
        let stop = task.cancel.child_token();
        let watcher = AbortOnDrop(tokio::spawn(watch_for_end(
            self.store.clone(),
            job_id.to_string(),
            stop.clone(),
        )));
        let n = params.images() as u64;
        let frames = params
            .validate(&self.runner.options.limits)
            .map_or(1, |e| e.frames().max(1));
        let (fetched, normalized) = (AtomicU64::new(0), AtomicU64::new(0));
        let report = |step: Step| {
            reporter.at_least(match step {
                Step::Fetched(_) => fetched.fetch_add(1, Ordering::Relaxed) + 1,
                Step::Normalized(_) => n + normalized.fetch_add(1, Ordering::Relaxed) + 1,
                Step::Encoded(f) => 2 * n + f.min(frames) * n / frames,
                Step::Stored => 3 * n + 1,
            });
        };
        let made = self
            .runner
            .make(&params, &video_key(job_id), &stop, &report)
            .await;
        drop(watcher);
        // Every progress event goes out before the job's end (failed, cancelled or succeeded).
        reporter.close().await;
        let mut result = match made {
            Err(VideoError::Cancelled) if !task.cancel.is_cancelled() => return Ok(()),
            other => other?,
        };
        result.video = format!("/api/v1/jobs/{job_id}/video");
        let value = serde_json::to_value(&result)
            .map_err(|e| Error::internal("cannot encode").with_source(e))?;
        if self.store.succeed(job_id, value).await?.is_some() {
            tracing::info!(
                job_id,
                images = result.images,
                bytes = result.bytes,
                fetch_ms = result.fetch_ms,
                normalize_ms = result.normalize_ms,
                encode_ms = result.encode_ms,
                "video made"
            );
        }
        Ok(())
    }
}

/// A task aborted when this is dropped (the handler's future may be dropped mid-run).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Cancels `stop` once the job has ended elsewhere (cancelled by its user).
async fn watch_for_end(store: JobStore, job_id: String, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if store
            .get(&job_id)
            .await
            .is_ok_and(|j| j.state.is_terminal())
        {
            stop.cancel();
            return;
        }
    }
}

/// A job's progress as the steps come, published at most every 100 ms; progress only rises, and
/// a job run again after a crash starts from the stored count, so no unit is counted twice.
struct Reporter {
    /// The units done so far (only rises); the publisher follows it.
    tx: tokio::sync::watch::Sender<u64>,
    publisher: AbortOnDrop,
}

impl Reporter {
    fn new(store: JobStore, job_id: &str, stored: u64, total: u64) -> Self {
        let (tx, mut rx) = tokio::sync::watch::channel(stored);
        let job_id = job_id.to_string();
        let publisher = tokio::spawn(async move {
            let mut published = stored;
            while rx.changed().await.is_ok() {
                let target = *rx.borrow_and_update();
                publish_progress(&store, &job_id, &mut published, target, total).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let target = *rx.borrow();
            publish_progress(&store, &job_id, &mut published, target, total).await;
        });
        Self {
            tx,
            publisher: AbortOnDrop(publisher),
        }
    }

    fn at_least(&self, units: u64) {
        self.tx.send_if_modified(|done| {
            let rises = units > *done;
            if rises {
                *done = units;
            }
            rises
        });
    }

    /// Publishes what is left and waits for it (a few seconds at most).
    async fn close(self) {
        let Self { tx, publisher, .. } = self;
        drop(tx);
        let mut publisher = publisher;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut publisher.0).await;
    }
}

async fn publish_progress(
    store: &JobStore,
    job_id: &str,
    published: &mut u64,
    target: u64,
    total: u64,
) {
    let before = *published;
    if target <= before {
        return;
    }
    let done = match store.add_progress(job_id, target - before, total).await {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(job_id, error = %e, "progress not recorded");
            return;
        }
    };
    *published = target;
    let event = JobEvent::Progress {
        job_id: job_id.to_string(),
        done,
        total,
    };
    if let Err(e) = store.publish(&event).await {
        tracing::warn!(job_id, error = %e, "progress not published");
    }
}

#[async_trait]
impl Handler for VideoHandler {
    async fn handle(&self, task: &TaskContext) -> Outcome {
        let msg: VideoMessage = match serde_json::from_slice(&task.delivery.body) {
            Ok(m) => m,
            Err(e) => return Outcome::Failed(format!("malformed message: {e}")),
        };
        match self.run(&msg.job_id, task).await {
            Ok(()) => Outcome::done(),
            Err(VideoError::Cancelled) => Outcome::RetryAfter {
                delay: Duration::from_secs(1),
                reason: "the worker gave the task up".into(),
            },
            Err(VideoError::Engine(e)) if e.is_retryable() => Outcome::RetryAfter {
                delay: Duration::from_secs(1),
                reason: e.to_string(),
            },
            Err(e) => self.store.fail_with_task(&msg.job_id, e.to_string()).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> VideoParams {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn parameters_are_checked_and_each_error_names_its_field() {
        let limits = VideoLimits::default();
        let ok = params(r#"{"urls":["http://127.0.0.1:9/a.png","https://x.example/b.jpg"]}"#);
        let e = ok.validate(&limits).unwrap();
        assert_eq!(
            (e.images, e.frame_ms, e.width, e.height),
            (2, 1000, 640, 480)
        );
        let cases = [
            (r#"{}"#, "no images"),
            (r#"{"urls":["a"],"keys":["uploads/x"]}"#, "not both"),
            (
                r#"{"urls":["ftp://x/a.png"]}"#,
                "urls[0]: `ftp://x/a.png`: only http",
            ),
            (r#"{"urls":["nope"]}"#, "urls[0]: `nope` is not a URL"),
            (r#"{"keys":["uploads/../jobs/x"]}"#, "keys[0]"),
            (r#"{"keys":["jobs/x/video.mp4"]}"#, "not under uploads/"),
            (r#"{"keys":["uploads/a\u0000b"]}"#, "keys[0]"),
            (
                r#"{"urls":["http://x/a"],"frame_seconds":0}"#,
                "frame_seconds 0 is outside",
            ),
            (
                r#"{"urls":["http://x/a"],"frame_seconds":1e9}"#,
                "frame_seconds",
            ),
            (
                r#"{"urls":["http://x/a"],"width":641}"#,
                "width 641 must be even",
            ),
            (r#"{"urls":["http://x/a"],"height":4000}"#, "height 4000"),
            (
                r#"{"urls":["http://x/a"],"crossfade_seconds":1}"#,
                "crossfade_seconds 1",
            ),
            (r#"{"urls":["http://x/a"],"fps":0}"#, "fps 0"),
            (
                &format!(
                    r#"{{"urls":{:?},"width":1920,"height":1080}}"#,
                    vec!["http://x/a"; 200]
                ),
                "over the limit of 1024 MiB",
            ),
        ];
        for (json, expected) in cases {
            let err = params(json).validate(&limits).unwrap_err();
            assert!(err.contains(expected), "{json}: {err}");
        }
        let many: Vec<String> = (0..501).map(|i| format!("http://x/{i}")).collect();
        let err = VideoParams {
            urls: many,
            ..ok.clone()
        }
        .validate(&limits)
        .unwrap_err();
        assert!(err.contains("501 images is over the limit of 500"), "{err}");
        assert!(
            serde_json::from_str::<VideoParams>(r#"{"urls":[],"speed":2}"#)
                .unwrap_err()
                .to_string()
                .contains("unknown field `speed`")
        );
    }
}
