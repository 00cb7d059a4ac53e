//! `nimbus bench video`: seconds per video of the Animoto job for N images, split between
//! fetching (over HTTP from a local server of JPEG photos-like images), normalizing (decoding and
//! fitting into frames) and encoding (ffmpeg), through the same `VideoRunner` the workers use.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use nimbus_core::Engine;
use nimbus_workloads::video::{FetchPolicy, VideoOptions, VideoParams, VideoResult, VideoRunner};
use tokio_util::sync::CancellationToken;

/// What to measure.
#[derive(Debug, Clone)]
pub struct VideoBench {
    /// Images per video, one row each.
    pub images: Vec<usize>,
    /// Runs per row (the table shows the median run).
    pub runs: usize,
    /// Frame (and source image) size.
    pub width: u32,
    /// Frame (and source image) size.
    pub height: u32,
    /// The ffmpeg executable.
    pub ffmpeg: PathBuf,
}

/// One row: the median run of a video of `images` images.
#[derive(Debug, Clone)]
pub struct VideoRow {
    /// Images in the video.
    pub images: usize,
    /// The median run's figures.
    pub median: VideoResult,
    /// Its total time, in milliseconds.
    pub total_ms: u64,
    /// Every run's total, in milliseconds.
    pub totals: Vec<u64>,
    /// ffmpeg alone on the same JPEG files on disk (no fetch, no normalizing), median, ms: the
    /// floor beside which the pipeline's cost reads.
    pub ffmpeg_alone_ms: u64,
}

/// The median time of ffmpeg turning the first `n` of `images` (JPEG files in `dir`) into the
/// same MP4 the pipeline makes, in milliseconds.
fn ffmpeg_alone(
    ffmpeg: &std::path::Path,
    dir: &std::path::Path,
    n: usize,
    runs: usize,
) -> Result<u64, String> {
    let list = dir.join(format!("list-{n}.txt"));
    let lines: String = (0..n)
        .map(|i| format!("file 'src-{i:05}.jpg'\nduration 1\n"))
        .collect();
    std::fs::write(&list, lines).map_err(|e| e.to_string())?;
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let started = std::time::Instant::now();
        let status = std::process::Command::new(ffmpeg)
            .args([
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "concat",
                "-safe",
                "0",
                "-i",
            ])
            .arg(&list)
            .args(["-vf", "fps=1,format=yuv420p"])
            .args(nimbus_workloads::video::encode::H264_OUTPUT)
            .arg(dir.join("alone.mp4"))
            .status()
            .map_err(|e| format!("cannot run {}: {e}", ffmpeg.display()))?;
        if !status.success() {
            return Err(format!("ffmpeg alone failed: {status}"));
        }
        times.push(started.elapsed().as_millis() as u64);
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

/// A JPEG of `width` x `height` that compresses like a photo (smooth shapes and some noise).
fn photo(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (cx, cy) = (rng.f32() * width as f32, rng.f32() * height as f32);
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        let d = ((x as f32 - cx).hypot(y as f32 - cy) / 4.0).sin() * 60.0;
        let noise = rng.u8(..24);
        image::Rgb([
            (x * 255 / width) as u8 / 2 + (d + 60.0) as u8 + noise / 2,
            (y * 255 / height) as u8 / 2 + noise,
            ((seed * 37) % 200) as u8 + noise / 3,
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&image)
        .map(|()| out)
        .unwrap_or_default()
}

/// Serves `images` at `/img/N.jpg` on 127.0.0.1 until `stop`.
async fn serve(images: Arc<Vec<Bytes>>, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = stop.cancelled() => return,
            };
            let Ok((stream, _)) = accepted else { continue };
            let images = images.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let images = images.clone();
                    async move {
                        let n: Option<usize> = req
                            .uri()
                            .path()
                            .strip_prefix("/img/")
                            .and_then(|p| p.strip_suffix(".jpg"))
                            .and_then(|n| n.parse().ok());
                        let response = match n.and_then(|n| images.get(n % images.len().max(1))) {
                            Some(bytes) => Response::builder()
                                .header("content-type", "image/jpeg")
                                .body(Full::new(bytes.clone())),
                            None => Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::new())),
                        };
                        Ok::<_, Infallible>(response.unwrap_or_default())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Runs the benchmark on `engine` (its blobs keep the videos); one row per image count.
pub async fn run(engine: Engine, bench: &VideoBench) -> Result<Vec<VideoRow>, String> {
    let most = bench.images.iter().copied().max().unwrap_or(1).max(1);
    let (w, h) = (bench.width, bench.height);
    let images = tokio::task::spawn_blocking(move || {
        (0..most as u64)
            .map(|i| Bytes::from(photo(w, h, i)))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| e.to_string())?;
    let sources = tempfile::tempdir().map_err(|e| e.to_string())?;
    for (i, bytes) in images.iter().enumerate() {
        std::fs::write(sources.path().join(format!("src-{i:05}.jpg")), bytes)
            .map_err(|e| e.to_string())?;
    }
    let stop = CancellationToken::new();
    let _stop_server = stop.clone().drop_guard();
    let addr = serve(Arc::new(images), stop.clone())
        .await
        .map_err(|e| format!("cannot serve the images: {e}"))?;
    let options = VideoOptions {
        ffmpeg: bench.ffmpeg.clone(),
        fetch: FetchPolicy {
            allow: vec![format!("127.0.0.1:{}", addr.port()).parse()?],
            ..FetchPolicy::default()
        },
        ..VideoOptions::default()
    };
    let runner = VideoRunner::new(engine, options)?;
    let mut rows = Vec::new();
    for &n in &bench.images {
        let params = VideoParams {
            urls: (0..n)
                .map(|i| format!("http://{addr}/img/{i}.jpg"))
                .collect(),
            keys: Vec::new(),
            frame_seconds: 1.0,
            width: w,
            height: h,
            crossfade_seconds: 0.0,
            fps: 25,
        };
        let mut runs = Vec::new();
        for run in 0..bench.runs.max(1) {
            let started = std::time::Instant::now();
            let made = runner
                .make(
                    &params,
                    &format!("bench/video-{n}-{run}.mp4"),
                    &stop,
                    &|_| {},
                )
                .await
                .map_err(|e| e.to_string())?;
            runs.push((started.elapsed().as_millis() as u64, made));
        }
        runs.sort_by_key(|(total, _)| *total);
        let totals = runs.iter().map(|(t, _)| *t).collect();
        let (total_ms, median) = runs.swap_remove(runs.len() / 2);
        let (ffmpeg, dir, count) = (
            bench.ffmpeg.clone(),
            sources.path().to_path_buf(),
            bench.runs,
        );
        let ffmpeg_alone_ms =
            tokio::task::spawn_blocking(move || ffmpeg_alone(&ffmpeg, &dir, n, count))
                .await
                .map_err(|e| e.to_string())??;
        rows.push(VideoRow {
            images: n,
            median,
            total_ms,
            totals,
            ffmpeg_alone_ms,
        });
    }
    Ok(rows)
}

/// The rows as a Markdown table.
pub fn table(rows: &[VideoRow]) -> String {
    let mut out = String::from(
        "| images | video | seconds per video | fetch | normalize | encode | store and rest | runs (s) | ffmpeg alone on the JPEGs (s) |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n",
    );
    for r in rows {
        let m = &r.median;
        let rest = r
            .total_ms
            .saturating_sub(m.fetch_ms + m.normalize_ms + m.encode_ms);
        let pct = |ms: u64| ms as f64 * 100.0 / r.total_ms.max(1) as f64;
        let runs: Vec<String> = r
            .totals
            .iter()
            .map(|t| format!("{:.2}", *t as f64 / 1000.0))
            .collect();
        out.push_str(&format!(
            "| {} | {} s, {} KiB | {:.2} | {} ms ({:.0} %) | {} ms ({:.0} %) | {} ms ({:.0} %) | {} ms | {} | {:.2} |\n",
            r.images,
            m.seconds,
            m.bytes / 1024,
            r.total_ms as f64 / 1000.0,
            m.fetch_ms,
            pct(m.fetch_ms),
            m.normalize_ms,
            pct(m.normalize_ms),
            m.encode_ms,
            pct(m.encode_ms),
            rest,
            runs.join(", "),
            r.ffmpeg_alone_ms as f64 / 1000.0,
        ));
    }
    out
}
