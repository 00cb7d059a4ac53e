//! From images to an H.264 MP4: each image fitted into the frame (its aspect ratio kept, centred
//! on black) and written as a BMP frame in the job's temporary directory, then ffmpeg run on
//! them through the one process runner (time limit, cancel, its stderr kept for the message),
//! its `-progress` lines read for the frame count.

use std::path::{Path, PathBuf};
use std::time::Duration;

use image::imageops::FilterType;
use image::{Rgb, RgbImage};
use nimbus_scale::process::{self, RunError, RunLimits};
use tokio_util::sync::CancellationToken;

use crate::classify::images::{self, ImageError};

/// The encoder and container settings of every video (the benchmark's floor uses them too).
pub const H264_OUTPUT: [&str; 8] = [
    "-c:v",
    "libx264",
    "-preset",
    "veryfast",
    "-movflags",
    "+faststart",
    "-f",
    "mp4",
];

/// How the video is made from its frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Encoding {
    /// How many images.
    pub images: usize,
    /// How long each image shows, in milliseconds.
    pub frame_ms: u32,
    /// How long each cross-fade into the next image lasts, in milliseconds (0: cuts).
    pub crossfade_ms: u32,
    /// Frames per second of the output when cross-fading (without, one frame per image).
    pub fps: u32,
    /// Frames each image lasts when cross-fading (`frame_ms` x `fps`, a whole number; 1
    /// without).
    pub frames_per_image: u32,
    /// Frame width in pixels (even).
    pub width: u32,
    /// Frame height in pixels (even).
    pub height: u32,
}

impl Encoding {
    /// The input's frame rate (images a second) as ffmpeg reads it: exact, so the video lasts
    /// what was asked.
    fn input_rate(&self) -> String {
        if self.crossfade_ms == 0 {
            format!("1000/{}", self.frame_ms)
        } else {
            format!("{}/{}", self.fps, self.frames_per_image)
        }
    }

    /// How many frames the video has.
    pub fn frames(&self) -> u64 {
        u64::from(self.frames_per_image) * self.images as u64
    }

    /// Its length in seconds.
    pub fn seconds(&self) -> f64 {
        if self.crossfade_ms == 0 {
            f64::from(self.frame_ms) * self.images as f64 / 1000.0
        } else {
            self.frames() as f64 / f64::from(self.fps)
        }
    }

    /// ffmpeg's arguments, reading `frame-%05d.bmp` in `dir` and writing `out`.
    pub fn ffmpeg_args(&self, dir: &Path, out: &Path) -> Vec<String> {
        let input_rate = self.input_rate();
        let mut args: Vec<String> = [
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostats",
            "-progress",
            "pipe:1",
            "-y",
            "-framerate",
            &input_rate,
            "-i",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        args.push(dir.join("frame-%05d.bmp").display().to_string());
        let mut filters = Vec::new();
        if self.crossfade_ms > 0 {
            // The framerate filter blends two images for output frames whose position between
            // them lies in [interp_start, interp_end] (of 255): the last crossfade/frame of each.
            let start = 255 - (255 * self.crossfade_ms / self.frame_ms).min(255);
            filters.push(format!(
                "framerate=fps={}:interp_start={start}:interp_end=255:scene=100",
                self.fps
            ));
        }
        filters.push("format=yuv420p".into());
        args.extend(["-vf".to_string(), filters.join(",")]);
        args.extend(H264_OUTPUT.iter().map(|s| (*s).to_string()));
        args.push(out.display().to_string());
        args
    }
}

/// `bytes` decoded (with the image limits: size, dimensions, decompression bombs) and fitted
/// into `width` x `height`.
pub fn normalize(bytes: &[u8], width: u32, height: u32) -> Result<RgbImage, ImageError> {
    let image = images::decode(bytes)?.to_rgb8();
    let (w, h) = image.dimensions();
    let scale = f64::min(
        f64::from(width) / f64::from(w),
        f64::from(height) / f64::from(h),
    );
    let fit = |side: u32, limit: u32| ((f64::from(side) * scale).round() as u32).clamp(1, limit);
    let (fw, fh) = (fit(w, width), fit(h, height));
    let resized = if (fw, fh) == (w, h) {
        image
    } else {
        image::imageops::resize(&image, fw, fh, FilterType::Triangle)
    };
    let mut frame = RgbImage::from_pixel(width, height, Rgb([0, 0, 0]));
    image::imageops::overlay(
        &mut frame,
        &resized,
        i64::from((width - fw) / 2),
        i64::from((height - fh) / 2),
    );
    Ok(frame)
}

/// Writes frame `index` of `dir` as an uncompressed BMP: nothing to compress here and nothing
/// to decompress in ffmpeg (PNG frames cost a fifth of the encoding time).
pub fn write_frame(dir: &Path, index: usize, frame: &RgbImage) -> std::io::Result<()> {
    let path = dir.join(format!("frame-{index:05}.bmp"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    image::codecs::bmp::BmpEncoder::new(&mut file)
        .encode(
            frame.as_raw(),
            frame.width(),
            frame.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(std::io::Error::other)?;
    std::io::Write::flush(&mut file)
}

/// The most bytes of frames a video may hold in its temporary directory.
pub const MAX_FRAME_BYTES: u64 = 1 << 30;

/// Runs `ffmpeg` on the frames in `dir` and returns the MP4's path; `on_frame` hears the
/// number of frames encoded so far.
pub async fn encode(
    ffmpeg: &Path,
    encoding: &Encoding,
    dir: &Path,
    timeout: Duration,
    cancel: &CancellationToken,
    mut on_frame: impl FnMut(u64),
) -> Result<PathBuf, RunError> {
    let out = dir.join("video.mp4");
    let mut command = tokio::process::Command::new(ffmpeg);
    command
        .args(encoding.ffmpeg_args(dir, &out))
        .current_dir(dir);
    let limits = RunLimits {
        timeout: Some(timeout),
        stderr_tail: 1500,
    };
    process::run(command, &limits, cancel, |line| {
        if let Some(n) = line
            .strip_prefix("frame=")
            .and_then(|n| n.trim().parse().ok())
        {
            on_frame(n);
        }
    })
    .await?
    .success(&ffmpeg.display().to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_seconds_follow_the_parameters() {
        let cuts = Encoding {
            images: 3,
            frame_ms: 2000,
            crossfade_ms: 0,
            fps: 25,
            frames_per_image: 1,
            width: 64,
            height: 48,
        };
        assert_eq!(cuts.frames(), 3);
        assert!((cuts.seconds() - 6.0).abs() < 1e-9);
        let fades = Encoding {
            crossfade_ms: 500,
            fps: 10,
            frames_per_image: 20,
            ..cuts
        };
        assert_eq!(fades.frames(), 60);
        let args = fades
            .ffmpeg_args(Path::new("/t"), Path::new("/t/v.mp4"))
            .join(" ");
        assert!(
            args.contains("framerate=fps=10:interp_start=192:interp_end=255"),
            "{args}"
        );
        assert!(
            args.contains("-framerate 10/20 -i /t/frame-%05d.bmp"),
            "{args}"
        );
    }

    #[test]
    fn an_image_is_fitted_into_the_frame_on_black() {
        let mut png = Vec::new();
        let wide = RgbImage::from_pixel(200, 50, Rgb([255, 255, 255]));
        image::DynamicImage::ImageRgb8(wide)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let frame = normalize(&png, 100, 100).unwrap();
        assert_eq!(frame.dimensions(), (100, 100));
        assert_eq!(
            frame.get_pixel(50, 50),
            &Rgb([255, 255, 255]),
            "centre is the image"
        );
        assert_eq!(
            frame.get_pixel(50, 5),
            &Rgb([0, 0, 0]),
            "bars above and below"
        );
        let err = normalize(b"plain text, not an image", 10, 10).unwrap_err();
        assert!(err.to_string().contains("not a readable image"), "{err:?}");
    }
}
