//! `nimbus video gen` (seed 002's Animoto generator: a workload of video tasks) and the video
//! flags of `nimbus worker` and `nimbus up` turned into the workers' options.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use nimbus_workloads::video::{self, AllowEntry, FetchPolicy, VideoOptions, VideoParams};
use object_store::path::Path as BlobPath;

use crate::args::{EngineArgs, VideoArgs, VideoCmd};
use crate::engine_url;

/// The workers' video options from the flags; warns when ffmpeg is not there (video jobs then
/// fail saying so, and nothing else is affected).
pub fn options(args: &VideoArgs) -> anyhow::Result<VideoOptions> {
    let allow = args
        .allow_fetch
        .iter()
        .map(|e| e.parse::<AllowEntry>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        args.fetch_max_bytes > 0,
        "--fetch-max-bytes must be at least 1"
    );
    if find_program(&args.ffmpeg).is_none() {
        tracing::warn!(
            ffmpeg = %args.ffmpeg.display(),
            "ffmpeg not found: video jobs will fail until it is installed (apt install ffmpeg) or given with --ffmpeg PATH"
        );
    }
    Ok(VideoOptions {
        ffmpeg: args.ffmpeg.clone(),
        fetch: FetchPolicy {
            allow,
            max_bytes: args.fetch_max_bytes,
            timeout: args.fetch_timeout,
            ..FetchPolicy::default()
        },
        encode_timeout: args.encode_timeout,
        ..VideoOptions::default()
    })
}

/// The same flags for a worker process this one starts.
pub fn forward(args: &VideoArgs) -> Vec<String> {
    let mut out = Vec::new();
    for entry in &args.allow_fetch {
        out.extend(["--allow-fetch".to_string(), entry.clone()]);
    }
    let ffmpeg = find_program(&args.ffmpeg).unwrap_or_else(|| args.ffmpeg.clone());
    out.extend([
        "--ffmpeg".to_string(),
        ffmpeg.display().to_string(),
        "--fetch-max-bytes".to_string(),
        args.fetch_max_bytes.to_string(),
        "--fetch-timeout".to_string(),
        humantime::format_duration(args.fetch_timeout).to_string(),
        "--encode-timeout".to_string(),
        humantime::format_duration(args.encode_timeout).to_string(),
    ]);
    out
}

/// `program` as a path that exists: itself when it names a path, else the first match on PATH.
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

pub async fn run(engine: &EngineArgs, cmd: VideoCmd) -> anyhow::Result<()> {
    let VideoCmd::Gen {
        count,
        images,
        urls,
        per_video,
        frame_seconds,
        width,
        height,
        crossfade_seconds,
        output,
    } = cmd;
    anyhow::ensure!(count >= 1, "COUNT must be at least 1");
    let (sources, from_urls) = match (&images, &urls) {
        (Some(dir), _) => (upload_images(engine, dir).await?, false),
        (None, Some(file)) => (read_urls(file)?, true),
        (None, None) => anyhow::bail!("give --images DIR or --urls FILE"),
    };
    let per = per_video.unwrap_or(sources.len());
    anyhow::ensure!(
        (1..=sources.len()).contains(&per),
        "--per-video {per} must be within 1 and the {} images given",
        sources.len()
    );
    let mut lines = String::new();
    for job in 0..count {
        let chosen: Vec<String> = (0..per)
            .map(|i| sources[(job * per + i) % sources.len()].clone())
            .collect();
        let (urls, keys) = if from_urls {
            (chosen, Vec::new())
        } else {
            (Vec::new(), chosen)
        };
        let params = VideoParams {
            urls,
            keys,
            frame_seconds,
            width,
            height,
            crossfade_seconds,
            fps: 25,
        };
        params
            .validate(&video::VideoLimits::default())
            .map_err(anyhow::Error::msg)?;
        lines.push_str("video ");
        lines.push_str(&serde_json::to_string(&params)?);
        lines.push('\n');
    }
    std::fs::write(&output, lines).with_context(|| format!("cannot write {}", output.display()))?;
    eprintln!(
        "wrote {count} video tasks of {per} images each to {}",
        output.display()
    );
    Ok(())
}

fn read_urls(file: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read --urls {}", file.display()))?;
    let urls: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    anyhow::ensure!(!urls.is_empty(), "{} lists no URLs", file.display());
    Ok(urls)
}

/// Checks every image of `dir` and stores it under `uploads/video/`; returns the keys, in
/// file-name order.
async fn upload_images(engine: &EngineArgs, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read --images {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "{} holds no files", dir.display());
    let engine = engine_url::open(engine).await?;
    let batch = uuid::Uuid::now_v7();
    let mut keys = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        nimbus_workloads::classify::check_header(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let key = format!("{}video/{batch}/{i:05}", video::UPLOADS);
        engine
            .blobs
            .put(&BlobPath::from(key.as_str()), Bytes::from(bytes).into())
            .await
            .with_context(|| format!("cannot store {}", file.display()))?;
        keys.push(key);
    }
    Ok(keys)
}
