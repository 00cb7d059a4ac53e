//! Image checks shared by the web tier (before anything is queued) and the workers: format,
//! dimensions (a decompression bomb is refused from its header, before any pixel is unpacked),
//! and full decoding.

use image::{DynamicImage, ImageReader};

/// The largest image accepted, in pixels (a decompression bomb declares far more).
pub const MAX_PIXELS: u64 = 40_000_000;
/// The largest side accepted, in pixels.
pub const MAX_SIDE: u32 = 12_000;

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Nothing was sent.
    #[error("the image is empty")]
    Empty,
    /// Not a format we read, or corrupt or truncated data.
    #[error("not a readable image: {0}")]
    Unreadable(String),
    /// Declared dimensions over the limits (a decompression bomb, or just huge).
    #[error("image of {width} x {height} pixels is over the limit of {MAX_SIDE} pixels a side and {MAX_PIXELS} pixels in all")]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
}

/// One label and its probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prediction {
    /// The class name.
    pub label: String,
    /// Softmax probability, 0 to 1.
    pub score: f32,
    /// The class index.
    pub class: usize,
}

/// Decodes with the dimension check first, so a bomb is refused before any pixel is unpacked.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, ImageError> {
    check_header(bytes)?;
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Unreadable(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    // What decoding may allocate: the largest image accepted in 8-bit RGBA, not the image
    // crate's 512 MiB (several decodes run at once, one per core).
    limits.max_alloc = Some(MAX_PIXELS * 4 + (16 << 20));
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| ImageError::Unreadable(e.to_string()))
}

/// Checks what can be checked without decoding the pixels: not empty, a known format, and
/// dimensions within the limits. Returns the dimensions.
pub fn check_header(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Unreadable(e.to_string()))?;
    if reader.format().is_none() {
        return Err(ImageError::Unreadable(
            "unknown format (PNG, JPEG, GIF, BMP and WebP are read)".into(),
        ));
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| ImageError::Unreadable(e.to_string()))?;
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageError::TooLarge { width, height });
    }
    Ok((width, height))
}
