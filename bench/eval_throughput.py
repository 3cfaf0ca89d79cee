"""Evaluation throughput (pairs/s, pair pictures included) against two references:

- the ceiling: every distinct image through the backbone once, on tensors already in memory;
- the original toolkit's way: every pair through the whole network at batch 1, one matplotlib
  figure saved per pair (timed on a subset and scaled).

    python bench/eval_throughput.py --data orl_faces --out bench/results/eval.json
    python bench/eval_throughput.py --device cuda --amp --pairs-per-image 9
"""

import argparse
import os
import tempfile
import time

import torch

from common import data_folder, report
from siamese.device import autocast, resolve_device
from siamese.evaluate import evaluate
from siamese.images import scan_folder
from siamese.model import SiameseNetwork
from siamese.pairs import evaluation_pairs
from siamese.predict import TorchPredictor
from siamese.report import write_report


def ceiling_seconds(model, paths, batch, device, amp):
    images = torch.stack([torch.from_numpy(model.preprocessing.load(p)) for p in paths]).to(device)
    model.eval()
    with torch.inference_mode(), autocast(device, amp):
        model.embed(images[:batch])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            model.embed(images[i:i + batch])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.perf_counter() - start


def original_way_pairs_per_second(model, pairs, out_dir, device):
    """Batch-1 full forward per pair and a matplotlib figure per pair, as the original eval.py did."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prep = model.preprocessing
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for i, pair in enumerate(pairs):
            x1 = torch.from_numpy(prep.load(pair.left))[None].to(device)
            x2 = torch.from_numpy(prep.load(pair.right))[None].to(device)
            prob = torch.sigmoid(model(x1, x2))[0].item()
            fig = plt.figure(figsize=(4, 2))
            plt.suptitle(f"cls1={os.path.basename(os.path.dirname(pair.left))}  conf={prob:.2f}")
            for k, x in enumerate((x1, x2)):
                fig.add_subplot(1, 2, k + 1)
                plt.imshow(x[0, 0].cpu().numpy(), cmap=plt.cm.gray)
                plt.axis("off")
            plt.savefig(os.path.join(out_dir, f"{i}.png"))
            plt.close(fig)  # the original never closed them, which only makes it slower
    return len(pairs) / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="orl_faces", help="DATASET[:split] under ../shared/data, or 'digits'")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", default=224, type=int)
    p.add_argument("--pairs-per-image", default=1, type=int)
    p.add_argument("--batch-size", default=None, type=int, help="images per batch (default: eval.py's)")
    p.add_argument("--other-batch-size", default=64, type=int,
                   help="also time eval at this batch size, for comparison (0: leave it out)")
    p.add_argument("--workers", default=2, type=int)
    p.add_argument("--baseline-pairs", default=40, type=int, help="pairs timed for the original way (0: leave it out)")
    p.add_argument("--repeats", default=3, type=int, help="interleaved measurements; the best of each is kept")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="mixed precision as eval.py --amp (float16 on CUDA, bfloat16 on CPUs)")
    p.add_argument("--scratch", default=None,
                   help="folder for the evaluation's files (default: the system's temporary folder); creating "
                        "files is a large share of writing 720 pictures, and its cost depends on the file system")
    p.add_argument("--out", default="bench/results/eval_throughput.json")
    args = p.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = SiameseNetwork(args.backbone, image_size=args.image_size).to(device).eval()
    folder = scan_folder(data_folder(args.data))
    pairs = evaluation_pairs(folder, seed=1, pairs_per_image=args.pairs_per_image)
    paths = sorted({x for pair in pairs for x in (pair.left, pair.right)})
    predictor = TorchPredictor(model, device=device, batch_size=args.batch_size, workers=args.workers, amp=args.amp)
    batch = predictor.batch_size  # the ceiling runs at the batch size eval.py uses
    other = None
    if args.other_batch_size and args.other_batch_size != batch:
        other = TorchPredictor(model, device=device, batch_size=args.other_batch_size, workers=args.workers, amp=args.amp)
    tops, ours, timings, others = [], [], [], []

    def timed_eval(scorer, out):
        """One evaluation into a new folder, as a user's run writes. Nothing is deleted until the
        end: ext4 skips inodes freed in the last minute or more when it creates a file, so files
        created right after thousands were deleted cost up to a millisecond each."""
        report_dir = tempfile.mkdtemp(dir=out)
        start = time.perf_counter()
        result = evaluate(scorer, pairs)
        scored, before = time.perf_counter(), os.times()
        write_report(result, report_dir, threshold=0.5, workers=args.workers)
        end, after = time.perf_counter(), os.times()
        # user: drawing and encoding; system: mostly the kernel creating one file per pair
        cpu = (after.user - before.user, after.system - before.system)
        return len(pairs) / (end - start), (scored - start, end - scored, *cpu)

    with tempfile.TemporaryDirectory(dir=args.scratch) as out:
        ceiling_seconds(model, paths[:batch], batch, device, args.amp)  # warm-up
        for _ in range(args.repeats):  # interleaved, best of each
            tops.append(len(pairs) / ceiling_seconds(model, paths, batch, device, args.amp))
            rate, split = timed_eval(predictor, out)
            ours.append(rate)
            timings.append(split)
            if other:
                others.append(timed_eval(other, out)[0])
        original = None
        if args.baseline_pairs:
            os.makedirs(os.path.join(out, "original"))
            original = original_way_pairs_per_second(model, pairs[:args.baseline_pairs], os.path.join(out, "original"),
                                                     device)
    top, best = max(tops), max(ours)
    scoring_s, pictures_s, pictures_user_s, pictures_system_s = timings[ours.index(best)]
    rows = [{"method": f"ceiling: backbone once per image, tensors in memory, batch {batch}", "pairs_s": top,
             "vs_ceiling": 1.0},
            {"method": f"eval (cached features + Pillow pictures), batch {batch}", "pairs_s": best, "vs_ceiling": best / top,
             "scoring_s": scoring_s, "pictures_s": pictures_s, "pictures_user_cpu_s": pictures_user_s,
             "pictures_system_cpu_s": pictures_system_s, "runs": ours}]
    if other:
        rows.append({"method": f"the same at batch {args.other_batch_size}", "pairs_s": max(others),
                     "vs_ceiling": max(others) / top, "runs": others})
    if original is not None:
        rows.append({"method": "original way (batch-1 pair forward + matplotlib)", "pairs_s": original,
                     "vs_ceiling": original / top})
        for row in rows:
            row["speedup_vs_original"] = row["pairs_s"] / original
    precision = " with --amp" if args.amp else ""
    report(f"Evaluation throughput: {len(pairs)} pairs over {len(paths)} images of {args.data}, {args.backbone} at "
           f"{args.image_size} px on {device}{precision}", rows, ["method", "pairs_s", "vs_ceiling", "speedup_vs_original"], args.out)
    print(f"fastest eval run: scoring {scoring_s:.3f} s, then writing the files {pictures_s:.3f} s (CPU time: "
          f"{pictures_user_s:.2f} s user, {pictures_system_s:.2f} s system, mostly creating {len(pairs)} picture files)")


if __name__ == "__main__":
    main()
