"""Peak resident memory of a short training run and of an evaluation, each in its own process
(data-loading workers included).

    python bench/memory.py --out bench/results/memory.json
"""

import argparse
import os
import subprocess
import sys
import tempfile

from common import ROOT, data_folder, report

PROBE = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_mib(command):
    out = subprocess.run([sys.executable, "-c", PROBE, *command], check=True, capture_output=True, text=True).stdout
    return int(out.strip()) / 1024  # ru_maxrss is in KiB on Linux


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="orl_faces")
    p.add_argument("--image-size", default=224, type=int)
    p.add_argument("--batch-size", default=32, type=int)
    p.add_argument("--out", default="bench/results/memory.json")
    args = p.parse_args()
    train_dir, val_dir = data_folder(args.data.split(":")[0] + ":train"), data_folder(args.data.split(":")[0] + ":val")
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        common = ["--weights", "none", "--image-size", str(args.image_size), "--device", "cpu"]
        train_cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--train-path", train_dir, "--val-path", val_dir,
                     "-o", run, "-e", "1", "--batch-size", str(args.batch_size), "--workers", "2", *common]
        train_peak = peak_mib(train_cmd)
        eval_cmd = [sys.executable, os.path.join(ROOT, "eval.py"), "-v", val_dir, "-o", os.path.join(tmp, "eval"),
                    "-c", os.path.join(run, "last.pth"), "--device", "cpu", "--workers", "2"]
        eval_peak = peak_mib(eval_cmd)
    rows = [{"job": f"train.py, 1 epoch, batch {args.batch_size}, {args.image_size} px, 2 workers", "peak_rss_mib": train_peak},
            {"job": "eval.py, all pictures", "peak_rss_mib": eval_peak}]
    report(f"Peak memory (largest single process) on {args.data}", rows, ["job", "peak_rss_mib"], args.out)


if __name__ == "__main__":
    main()
