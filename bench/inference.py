"""Inference: pair latency at batch 1 and throughput at batch 32, PyTorch eager vs ONNX Runtime
on the CPU, plus the wall time of one whole `infer_tensorrt.py` process on an ONNX file. Where
a CUDA GPU is present, also PyTorch eager on it (FP32 and float16 autocast), ONNX Runtime's
CUDA provider if installed, and TensorRT FP32/FP16 engines if TensorRT is installed. Every
row goes from host arrays to host scores, as a deployed model does.

    python bench/inference.py --out bench/results/inference.json
"""

import argparse
import copy
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from common import ROOT, data_folder, report
from siamese.device import autocast
from siamese.export import deployed_module, export_onnx
from siamese.images import scan_folder
from siamese.model import SiameseNetwork
from siamese.runtime import OnnxRuntimeModel


def median_seconds(fn, runs, batch):
    """Median over `runs` calls at batch 1, fewer for the slower batch-32 calls."""
    runs = runs if batch == 1 else max(3, runs // 4)
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pair_inputs(batch, size):
    x1 = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    return x1, x1[::-1].copy()


def row(runtime, batch, seconds, reference):
    return {"runtime": runtime, "batch": batch, "latency_ms": 1000 * seconds, "pairs_s": batch / seconds,
            "vs_pytorch": seconds / reference}


def gpu_rows(network, onnx_path, tmp, size, runs):
    """Rows for the GPU; vs_pytorch compares with PyTorch eager FP32 on the same GPU."""
    device = torch.device("cuda")
    eager = deployed_module(copy.deepcopy(network), "pair").to(device)
    name = torch.cuda.get_device_name(device)
    runtimes = []

    def eager_runner(half):
        def predict(x1, x2):
            with torch.inference_mode(), autocast(device, half):
                return eager(torch.from_numpy(x1).to(device), torch.from_numpy(x2).to(device)).float().cpu()
        return predict

    runtimes.append((f"PyTorch eager FP32 ({name})", eager_runner(False)))
    runtimes.append((f"PyTorch eager float16 autocast ({name})", eager_runner(True)))
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        runtimes.append((f"ONNX Runtime CUDA ({name})", OnnxRuntimeModel(onnx_path, providers=["CUDAExecutionProvider"]).predict))
    engines = []
    if importlib.util.find_spec("tensorrt") is not None:
        from siamese.trt import TensorRTModel
        from siamese.trt import EngineBuild, build_engine_file

        fp16_onnx = os.path.join(tmp, "model_fp16.onnx")
        export_onnx(network, fp16_onnx, fp16=True)
        for precision, source in (("FP32", onnx_path), ("FP16", fp16_onnx)):
            engine_path = os.path.join(tmp, f"model_{precision}.engine")
            build_engine_file(source, engine_path, EngineBuild(fp16=precision == "FP16", max_batch=32), gpu_name=name,
                              log=lambda *_: None)
            engines.append(TensorRTModel(engine_path))
            runtimes.append((f"TensorRT {precision} ({name})", engines[-1].predict))
    rows = []
    for batch in (1, 32):
        x1, x2 = pair_inputs(batch, size)
        measured = [(label, median_seconds(lambda: predict(x1, x2), runs, batch))
                    for label, predict in runtimes]
        reference = measured[0][1]
        rows += [row(label, batch, seconds, reference) for label, seconds in measured]
    for engine in engines:
        engine.close()
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", default=224, type=int)
    p.add_argument("--runs", default=20, type=int)
    p.add_argument("--out", default="bench/results/inference.json")
    args = p.parse_args()
    torch.manual_seed(0)
    network = SiameseNetwork(args.backbone, image_size=args.image_size).eval()
    eager = deployed_module(network, "pair")
    size = args.image_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "model.onnx")
        export_onnx(network, onnx_path)
        runtime = OnnxRuntimeModel(onnx_path, providers=["CPUExecutionProvider"])
        for batch in (1, 32):
            x1, x2 = pair_inputs(batch, size)
            t1, t2 = torch.from_numpy(x1), torch.from_numpy(x2)
            with torch.inference_mode():
                torch_s = median_seconds(lambda: eager(t1, t2), args.runs, batch)
            onnx_s = median_seconds(lambda: runtime.predict(x1, x2), args.runs, batch)
            rows.append(row("PyTorch eager (CPU)", batch, torch_s, torch_s))
            rows.append(row("ONNX Runtime (CPU)", batch, onnx_s, torch_s))
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
        if torch.cuda.is_available():
            rows += gpu_rows(network, onnx_path, tmp, size, args.runs)
    report(f"Inference: {args.backbone} at {size} px", rows, ["runtime", "batch", "latency_ms", "pairs_s", "vs_pytorch"],
           args.out)


if __name__ == "__main__":
    main()
