//! An ImageNet-style ONNX classifier run with tract: decode an image (with limits), resize the
//! short side to 256 and crop the centre 224x224, normalize, infer, softmax, top-k.

use std::path::Path;

use image::DynamicImage;

use super::images::{decode, ImageError, Prediction};
use tract_onnx::prelude::*;

/// The model's input side.
const SIDE: u32 = 224;
/// The short side before the centre crop (224 / 0.875).
const RESIZE: u32 = 256;
type Plan = Arc<TypedRunnableModel>;

/// A loaded model and its labels.
pub struct Classifier {
    plan: Plan,
    labels: Vec<String>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("labels", &self.labels.len())
            .finish_non_exhaustive()
    }
}

impl Classifier {
    /// Loads an ONNX classifier taking `[1, 3, 224, 224]` and a JSON array of its labels.
    pub fn load(model: &Path, labels: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(labels)
            .map_err(|e| format!("cannot read labels {}: {e}", labels.display()))?;
        let labels: Vec<String> = serde_json::from_str(&text).map_err(|e| {
            format!(
                "labels {} are not a JSON array of names: {e}",
                labels.display()
            )
        })?;
        let plan = tract_onnx::onnx()
            .model_for_path(model)
            .and_then(|m| {
                m.with_input_fact(0, f32::fact([1, 3, SIDE as usize, SIDE as usize]).into())
            })
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| format!("cannot load model {}: {e}", model.display()))?;
        let classifier = Self { plan, labels };
        let probe = classifier.infer(
            Tensor::zero::<f32>(&[1, 3, SIDE as usize, SIDE as usize])
                .map_err(|e| e.to_string())?,
        )?;
        if probe.len() != classifier.labels.len() {
            return Err(format!(
                "the model has {} outputs but there are {} labels",
                probe.len(),
                classifier.labels.len()
            ));
        }
        Ok(classifier)
    }

    fn infer(&self, input: Tensor) -> Result<Vec<f32>, String> {
        let outputs = self
            .plan
            .run(tvec!(input.into()))
            .map_err(|e| format!("inference failed: {e}"))?;
        let logits = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| format!("unexpected model output: {e}"))?;
        Ok(logits.iter().copied().collect())
    }

    /// Times `runs` inferences alone (no decoding) on one image's input: for benchmarks.
    pub fn time_inference(
        &self,
        bytes: &[u8],
        runs: usize,
    ) -> Result<Vec<std::time::Duration>, ClassifyError> {
        let input = to_input(&decode(bytes)?);
        (0..runs)
            .map(|_| {
                let started = std::time::Instant::now();
                self.infer(input.clone()).map_err(ClassifyError::Model)?;
                Ok(started.elapsed())
            })
            .collect()
    }

    /// The `k` most likely labels of an encoded image (PNG, JPEG, GIF, BMP, WebP).
    pub fn classify(&self, bytes: &[u8], k: usize) -> Result<Vec<Prediction>, ClassifyError> {
        let image = decode(bytes)?;
        let logits = self.infer(to_input(&image)).map_err(ClassifyError::Model)?;
        Ok(top_k(&softmax(&logits), &self.labels, k))
    }
}

/// What classifying can run into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// The image itself is bad: the client's fault.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The model failed.
    #[error("{0}")]
    Model(String),
}

/// The centre 224/256 of the short side, square, resized to 224x224 (the same pixels as resizing
/// the short side to 256 and cropping the centre 224, without ever making a large image), then
/// (v - 127) / 128, NCHW.
fn to_input(image: &DynamicImage) -> Tensor {
    let (w, h) = (image.width().max(1), image.height().max(1));
    let side = ((w.min(h) as u64 * u64::from(SIDE)) / u64::from(RESIZE)).max(1) as u32;
    let (left, top) = ((w - side) / 2, (h - side) / 2);
    let crop = image
        .crop_imm(left, top, side, side)
        .resize_exact(SIDE, SIDE, image::imageops::FilterType::CatmullRom)
        .to_rgb8();
    let n = SIDE as usize;
    let array = tract_ndarray::Array4::from_shape_fn((1, 3, n, n), |(_, c, y, x)| {
        (f32::from(crop.get_pixel(x as u32, y as u32)[c]) - 127.0) / 128.0
    });
    array.into_tensor()
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

fn top_k(probabilities: &[f32], labels: &[String], k: usize) -> Vec<Prediction> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    order
        .into_iter()
        .take(k)
        .map(|class| Prediction {
            label: labels.get(class).cloned().unwrap_or_default(),
            score: probabilities[class],
            class,
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    use super::*;

    /// Debian's python3-skimage sample photos.
    pub const PHOTOS: &str = "/usr/lib/python3/dist-packages/skimage/data";

    /// Photo, and words one of which a correct top-5 label contains.
    pub const EXPECTED: [(&str, &[&str]); 5] = [
        ("chelsea.png", &["cat"]),
        ("coffee.png", &["espresso"]),
        ("rocket.jpg", &["missile", "space shuttle"]),
        ("motorcycle_left.png", &["moped", "scooter"]),
        ("camera.png", &["tripod"]),
    ];

    pub fn models() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
    }

    pub fn photo(name: &str) -> Vec<u8> {
        let path = Path::new(PHOTOS).join(name);
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (install python3-skimage; ./scripts/test.sh does)",
                path.display()
            )
        })
    }

    fn classifier() -> &'static Classifier {
        static MODEL: OnceLock<Classifier> = OnceLock::new();
        MODEL.get_or_init(|| {
            let dir = models();
            Classifier::load(
                &dir.join("efficientnet-lite0.onnx"),
                &dir.join("imagenet1k-labels.json"),
            )
            .unwrap()
        })
    }

    #[test]
    fn sample_photos_have_their_class_in_the_top_5() {
        for (name, words) in EXPECTED {
            let top = classifier().classify(&photo(name), 5).unwrap();
            assert_eq!(top.len(), 5);
            assert!(
                top.windows(2).all(|w| w[0].score >= w[1].score),
                "sorted by score"
            );
            let hit = top
                .iter()
                .any(|p| words.iter().any(|w| p.label.to_lowercase().contains(w)));
            assert!(hit, "{name}: expected one of {words:?} in {top:?}");
        }
        let top1 = classifier().classify(&photo("coffee.png"), 1).unwrap();
        assert_eq!(top1[0].label, "espresso");
        assert!(top1[0].score > 0.5, "{top1:?}");
    }

    #[test]
    fn a_thin_image_is_classified_without_a_huge_resize() {
        // 1 x 12000: resizing its short side to 256 first would make a 3-gigapixel image.
        let mut png = Vec::new();
        image::RgbImage::new(1, 12_000)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(classifier().classify(&png, 5).unwrap().len(), 5);
    }

    #[test]
    fn bad_images_are_refused_with_the_reason() {
        let refuse = |bytes: &[u8]| match classifier().classify(bytes, 5) {
            Err(ClassifyError::Image(e)) => e,
            other => panic!("accepted: {other:?}"),
        };
        assert_eq!(refuse(b""), ImageError::Empty);
        assert!(matches!(
            refuse(b"hello, not an image"),
            ImageError::Unreadable(_)
        ));
        let png = photo("chelsea.png");
        assert!(
            matches!(refuse(&png[..png.len() / 2]), ImageError::Unreadable(_)),
            "a truncated image"
        );
        // A decompression bomb: a header that declares 10 gigapixels, and a little data.
        let mut bomb = Vec::new();
        let mut writer = png::Encoder::new(&mut bomb, 100_000, 100_000)
            .write_header()
            .unwrap();
        writer
            .write_chunk(
                png::chunk::IDAT,
                &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
            )
            .unwrap();
        drop(writer);
        assert_eq!(
            refuse(&bomb),
            ImageError::TooLarge {
                width: 100_000,
                height: 100_000
            }
        );
        let err = refuse(&bomb).to_string();
        assert!(err.contains("over the limit"), "{err}");
        assert!(Classifier::load(
            Path::new("/nope.onnx"),
            &models().join("imagenet1k-labels.json")
        )
        .unwrap_err()
        .contains("cannot load model"));
    }
}
