"""Evaluation with a deployed model (ONNX Runtime, as eval_tensorrt.py runs it), pair pictures
included, measured side by side in one run:

- with the embedder and head of the export: each distinct image embedded once;
- the same export without them (an export made before they existed): every pair through the
  whole pair model;
- the ceiling: the ONNX Runtime embedder over the distinct images, on arrays already in memory.

    python bench/deployed_eval.py                       # ORL pairs.csv: 720 pairs over 80 images

Run it where no files were deleted in the last minutes (`make bench` runs it before the others
delete theirs): on ext4, creating files soon after thousands were deleted costs up to a
millisecond each, which the 720 pictures feel (see the README's Speed section).
    python bench/deployed_eval.py --image-size 224 --out bench/results/deployed_eval_224.json
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import torch

from common import SHARED_DATA, report
from siamese.evaluate import evaluate
from siamese.scoring import score_pairs
from siamese.export import export_onnx, fingerprint
from siamese.model import SiameseNetwork
from siamese.pairs import read_pairs_csv
from siamese.report import write_report
from siamese.contract import part_path
from siamese.runtime import OnnxRuntimeModel


def export(network, folder, parts):
    path = os.path.join(folder, "model.onnx")
    os.makedirs(folder)
    for part in parts:
        export_onnx(network, part_path(path, part), part=part, model_fingerprint=fingerprint(network))
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", default=os.path.join(SHARED_DATA, "orl_faces", "pairs.csv"),
                   help="pair list (CSV left,right,same; paths relative to its folder)")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", default=64, type=int, help="64: the ORL recipe's size")
    p.add_argument("--repeats", default=3, type=int, help="interleaved measurements; the best of each is kept")
    p.add_argument("--workers", default=2, type=int, help="picture-writing processes, as eval_tensorrt.py's default")
    p.add_argument("--out", default="bench/results/deployed_eval.json")
    args = p.parse_args()
    torch.manual_seed(0)
    network = SiameseNetwork(args.backbone, image_size=args.image_size).eval()
    pairs = read_pairs_csv(args.pairs, os.path.dirname(os.path.abspath(args.pairs)))
    paths = sorted({x for pair in pairs for x in (pair.left, pair.right)})
    with tempfile.TemporaryDirectory() as tmp:
        with_parts = OnnxRuntimeModel(export(network, os.path.join(tmp, "parts"), ("pair", "embed", "head")),
                                      providers=["CPUExecutionProvider"])
        pair_only = OnnxRuntimeModel(export(network, os.path.join(tmp, "pair"), ("pair",)),
                                     providers=["CPUExecutionProvider"])
        embedder = with_parts.parts[0]
        images = np.stack([with_parts.preprocessing.load(x) for x in paths])

        def ceiling():
            start = time.perf_counter()
            embedder.run({"images": images})
            return len(pairs) / (time.perf_counter() - start)

        def evaluation(model):
            report_dir = tempfile.mkdtemp(dir=tmp)
            start = time.perf_counter()
            result = evaluate(model, pairs)
            scored = time.perf_counter()
            write_report(result, report_dir, threshold=0.5, workers=args.workers)
            return len(pairs) / (time.perf_counter() - start), scored - start, result.scores

        warm_up = [(pair.left, pair.right) for pair in pairs[:8]]
        score_pairs(pair_only, warm_up)  # and the note about the missing parts, once
        score_pairs(with_parts, warm_up)
        tops, fast, slow = [], [], []
        for _ in range(args.repeats):
            tops.append(ceiling())
            fast.append(evaluation(with_parts))
            slow.append(evaluation(pair_only))
        difference = float(np.abs(fast[0][2] - slow[0][2]).max())
        spread = float(fast[0][2].min()), float(fast[0][2].max())
        shutil.rmtree(os.path.join(tmp, "parts"))
    top = max(tops)
    best_fast, best_slow = max(fast), max(slow)
    rows = [
        {"method": f"ceiling: ONNX Runtime embedder, {len(paths)} images in memory, batch {embedder.max_batch}",
         "pairs_s": top, "vs_ceiling": 1.0},
        {"method": "eval_tensorrt.py way, embedder + head (each image once), pictures included",
         "pairs_s": best_fast[0], "vs_ceiling": best_fast[0] / top, "scoring_s": best_fast[1],
         "scoring_vs_ceiling": len(pairs) / best_fast[1] / top, "vs_pair_model": best_fast[0] / best_slow[0],
         "runs": [r[0] for r in fast]},
        {"method": f"the same export without them: every pair through the pair model (batch {pair_only.max_batch})",
         "pairs_s": best_slow[0], "vs_ceiling": best_slow[0] / top, "scoring_s": best_slow[1],
         "scoring_vs_ceiling": len(pairs) / best_slow[1] / top, "runs": [r[0] for r in slow]},
    ]
    print(f"{len(pairs)} pairs over {len(paths)} images, {args.backbone} at {args.image_size} px; similarities from "
          f"{spread[0]:.4f} to {spread[1]:.4f}, largest difference between the two ways: {difference:.1e}")
    report(f"Deployed evaluation (ONNX Runtime, CPU), {len(pairs)} pairs over {len(paths)} images, "
           f"{args.backbone} {args.image_size} px", rows, ["method", "pairs_s", "vs_ceiling", "scoring_s", "scoring_vs_ceiling", "vs_pair_model"],
           args.out)


if __name__ == "__main__":
    main()
