"""INT8 against float32 with ONNX Runtime on this machine, measured side by side in one run:

- speed: the embedder's throughput (images/s, batches of 32, arrays in memory) and a whole
  evaluation as eval_tensorrt.py runs it (every distinct image decoded and embedded once, the
  pairs scored by the head), for resnet18 at 64 and 224 px;
- accuracy (with --checkpoint): a trained model quantized on some classes and scored on every
  pair of others, kept out as crossval.py keeps them (--holdout-classes, --holdout-seed).

    python bench/int8.py                                     # speed, on the ORL faces if present
    python bench/int8.py --checkpoint runs/cv_orl/outer/last.pth \\
        --data ../shared/data/orl_faces/train ../shared/data/orl_faces/val --holdout-classes 10
    python bench/int8.py --checkpoint runs/cv_omniglot/fold_1/last.pth \\
        --data ../shared/data/omniglot/train ../shared/data/omniglot/val --group-regex '(.+)_character[0-9]+$' \\
        --held-out Japanese_katakana Tagalog --n-way 20
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

from common import data_folder, report
from siamese.contract import PARTS, part_path
from siamese.evaluate import evaluate
from siamese.export import export_onnx, fingerprint
from siamese.images import scan_folder
from siamese.metrics import one_shot_accuracy
from siamese.model import SiameseNetwork
from siamese.pairs import evaluation_pairs
from siamese.quantize import Quantization, compare, quantize_parts
from siamese.runtime import OnnxRuntimeModel
from siamese.scoring import score_pairs

BATCH = 32


def export(network, folder):
    path = os.path.join(folder, "model.onnx")
    for part in PARTS:
        export_onnx(network, part_path(path, part), part=part, model_fingerprint=fingerprint(network))
    return path


def quantize(float_path, calibration_paths, folder, method="minmax"):
    """The INT8 copy for ONNX Runtime of the export at float_path, calibrated on the given images."""
    model = OnnxRuntimeModel(float_path, providers=["CPUExecutionProvider"])
    model.require_parts()
    q = Quantization(os.path.dirname(calibration_paths[0]), images=len(calibration_paths), method=method)
    out = os.path.join(folder, "model.int8.onnx")
    quantize_parts(model, {part: part_path(out, part) for part in PARTS}, calibration_paths, q, log=lambda line: None)
    return out


def embedder_rate(model, images, repeats):
    """Images per second through the embedder, the best of `repeats` passes."""
    embedder = model.parts[0]
    embedder.run({"images": images[:BATCH]})  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(images), BATCH):
            embedder.run({"images": images[i:i + BATCH]})
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def speed(args):
    folder = scan_folder(data_folder(args.data_name))
    rows = []
    for size in (64, 224):
        torch.manual_seed(0)
        network = SiameseNetwork("resnet18", image_size=size).eval()
        with tempfile.TemporaryDirectory() as tmp:
            float_path = export(network, tmp)
            calibration = list(np.random.default_rng(0).choice(folder.paths, 64, replace=False))
            models = {"fp32": OnnxRuntimeModel(float_path), "int8": OnnxRuntimeModel(quantize(float_path, calibration, tmp))}
            images = np.stack([models["fp32"].preprocessing.load(p) for p in folder.paths[:args.images]])
            pairs = evaluation_pairs(folder, seed=0, pairs_per_image=5)
            for _ in range(2):  # alternated, so that both see the same machine state
                for name, model in models.items():
                    rate = embedder_rate(model, images, args.repeats)
                    start = time.perf_counter()
                    evaluate(model, pairs)
                    seconds = time.perf_counter() - start
                    rows.append({"image_size": size, "precision": name, "embedder_images_per_s": rate,
                                 "evaluation_s": seconds, "pairs": len(pairs), "images": len(folder)})
    best = {}
    for row in rows:  # the better of the two rounds of each
        key = (row["image_size"], row["precision"])
        if key not in best or row["evaluation_s"] < best[key]["evaluation_s"]:
            best[key] = row
    rows = list(best.values())
    for row in rows:
        base = best[(row["image_size"], "fp32")]
        row["speed-up"] = row["embedder_images_per_s"] / base["embedder_images_per_s"]
    report(f"INT8 against float32, ONNX Runtime CPU, resnet18 (random weights), {folder.root}", rows,
           ["image_size", "precision", "embedder_images_per_s", "speed-up", "evaluation_s", "pairs", "images"],
           args.out)


def one_shot(model, trials):
    """The share of one-shot trials whose right candidate the model scores highest."""
    pairs = [(t.query, candidate) for t in trials for candidate in t.candidates]
    similarities = np.asarray(score_pairs(model, pairs)).reshape(len(trials), -1)
    return one_shot_accuracy(similarities, [t.answer for t in trials])


def accuracy(args):
    from siamese.checkpoint import load_model
    from siamese.folds import class_groups, holdout_classes
    from siamese.images import merge_folders
    from siamese.pairs import one_shot_trials

    folder = merge_folders([scan_folder(path) for path in args.data])
    groups = class_groups(folder.classes, regex=args.group_regex)
    if args.held_out:  # named classes or groups (a crossval.py fold's held_out)
        held = {name for name, group in zip(folder.classes, groups) if name in args.held_out or group in args.held_out}
    else:
        held = set(holdout_classes(folder.classes, groups, count=args.holdout_classes, seed=args.holdout_seed))
    inner = [p for p, label in zip(folder.paths, folder.labels) if folder.classes[label] not in held]
    check = folder.subset(sorted(held))
    check_groups = [groups[folder.classes.index(name)] for name in check.classes]
    trials = (one_shot_trials(check, n_way=args.n_way, trials=400, seed=1, groups=check_groups if args.group_regex else None)
              if args.n_way else None)
    network, _ = load_model(args.checkpoint)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        float_path = export(network, tmp)
        float_model = OnnxRuntimeModel(float_path)
        for method in ("minmax", "percentile"):
            calibration = list(np.random.default_rng(0).choice(inner, min(200, len(inner)), replace=False))
            int8 = OnnxRuntimeModel(quantize(float_path, calibration, tmp, method=method))
            result = compare(float_model, int8, check)
            row = {"method": method, "pairs": result["pairs"], "auc_fp32": result["float"]["auc"],
                   "auc_int8": result["int8"]["auc"], "eer_fp32": result["float"]["eer"],
                   "eer_int8": result["int8"]["eer"], "max_difference": result["max_difference"]}
            if trials:
                row[f"{args.n_way}way_fp32"] = one_shot(float_model, trials)
                row[f"{args.n_way}way_int8"] = one_shot(int8, trials)
            rows.append(row)
    report(f"INT8 against float32 on {len(held)} held-out classes ({args.checkpoint})", rows,
           ["method", "pairs", "auc_fp32", "auc_int8", "eer_fp32", "eer_int8", "max_difference",
            *([f"{args.n_way}way_fp32", f"{args.n_way}way_int8"] if trials else [])], args.out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-name", default="orl_faces:train", help="shared dataset for the speed figures")
    p.add_argument("--images", default=96, type=int, help="images for the embedder throughput")
    p.add_argument("--repeats", default=3, type=int)
    p.add_argument("--checkpoint", default=None, help="measure the accuracy change of this trained model instead")
    p.add_argument("--data", nargs="+", default=None, help="with --checkpoint: the folders, as given to crossval.py")
    p.add_argument("--holdout-classes", default=10, type=int)
    p.add_argument("--holdout-seed", default=0, type=int)
    p.add_argument("--held-out", nargs="+", default=None,
                   help="with --checkpoint: score these classes or groups instead (a crossval.py fold's held_out)")
    p.add_argument("--group-regex", default=None, help="groups of classes, as crossval.py's (e.g. alphabets)")
    p.add_argument("--n-way", default=0, type=int, help="also the n-way one-shot accuracy, within groups if any")
    p.add_argument("--out", default=None, help="JSON output (default: bench/results/int8.json or int8_accuracy.json)")
    args = p.parse_args()
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    if args.checkpoint:
        args.out = args.out or os.path.join(results, "int8_accuracy.json")
        accuracy(args)
    else:
        args.out = args.out or os.path.join(results, "int8.json")
        speed(args)


if __name__ == "__main__":
    sys.exit(main())
