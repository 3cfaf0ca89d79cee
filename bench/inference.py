"""Inference: pair latency at batch 1 and throughput at batch 32, PyTorch eager vs ONNX Runtime
on the CPU (and TensorRT FP32/FP16 where a GPU and TensorRT are present), plus the wall time
of one whole `infer_tensorrt.py` process on an ONNX file.

    python bench/inference.py --out bench/results/inference.json
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from common import ROOT, data_folder, report
from siamese.export import export_onnx
from siamese.images import scan_folder
from siamese.model import SiameseNetwork, SimilarityModel
from siamese.runtime import OnnxRuntimeModel


def median_seconds(fn, runs):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", default=224, type=int)
    p.add_argument("--runs", default=20, type=int)
    p.add_argument("--out", default="bench/results/inference.json")
    args = p.parse_args()
    torch.manual_seed(0)
    network = SiameseNetwork(args.backbone, image_size=args.image_size).eval()
    eager = SimilarityModel(network).eval()
    size = args.image_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "model.onnx")
        export_onnx(network, onnx_path)
        runtime = OnnxRuntimeModel(onnx_path)
        for batch in (1, 32):
            x1 = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
            x2 = x1[::-1].copy()
            t1, t2 = torch.from_numpy(x1), torch.from_numpy(x2)
            with torch.inference_mode():
                torch_s = median_seconds(lambda: eager(t1, t2), args.runs if batch == 1 else max(3, args.runs // 4))
            onnx_s = median_seconds(lambda: runtime.predict(x1, x2), args.runs if batch == 1 else max(3, args.runs // 4))
            rows.append({"runtime": "PyTorch eager (CPU)", "batch": batch, "latency_ms": 1000 * torch_s,
                         "pairs_s": batch / torch_s, "vs_pytorch": 1.0})
            rows.append({"runtime": "ONNX Runtime (CPU)", "batch": batch, "latency_ms": 1000 * onnx_s,
                         "pairs_s": batch / onnx_s, "vs_pytorch": onnx_s / torch_s})
        images = scan_folder(data_folder("orl_faces")).paths[:2]
        command = [sys.executable, os.path.join(ROOT, "infer_tensorrt.py"), "--image1", images[0], "--image2", images[1],
                   "--engine", onnx_path]
        walls = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
        rows.append({"runtime": "infer_tensorrt.py process on .onnx (wall)", "batch": 1,
                     "latency_ms": 1000 * statistics.median(walls)})
    report(f"Inference: {args.backbone} at {size} px", rows, ["runtime", "batch", "latency_ms", "pairs_s", "vs_pytorch"],
           args.out)


if __name__ == "__main__":
    main()
