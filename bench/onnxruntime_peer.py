#!/usr/bin/env python3
"""onnxruntime on the same ONNX file as `nimbus bench model`, single-threaded: prints
`ms_per_image N` (median of RUNS inferences after 5 warm-up runs) and `load_ms N`.
Installs nothing: says what is missing and how to get it.

Usage: onnxruntime_peer.py MODEL.onnx [RUNS]
"""
import sys
import time

try:
    import numpy as np
    import onnxruntime as ort
except ImportError:
    print("missing: onnxruntime and numpy: pip install onnxruntime numpy")
    sys.exit(3)


def main():
    model, runs = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    started = time.perf_counter()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - started
    x = np.random.default_rng(1).random((1, 3, 224, 224), dtype=np.float32)
    for _ in range(5):
        session.run(None, {"input": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - t)
    print(f"onnxruntime {ort.__version__}")
    print(f"load_ms {load * 1000:.1f}")
    print(f"ms_per_image {float(np.median(times)) * 1000:.2f}")


if __name__ == "__main__":
    main()
