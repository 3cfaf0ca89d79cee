"""The demo: build a small real dataset (scikit-learn's handwritten digits) and run the toolkit
on it end to end on the CPU in a few minutes.

Example:
    python demo.py --out runs/demo
"""

import argparse
import os

import train
from siamese.demo import build_digits_dataset
from siamese.errors import cli


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/demo", type=str, help="folder for the data, the model and the results")
    p.add_argument("--epochs", default=6, type=int, help="training epochs")
    p.add_argument("--workers", default=2, type=int, help="data loading worker processes")
    return p


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    data = os.path.join(args.out, "data")
    train_dir, val_dir, counts = build_digits_dataset(data)
    print(f"demo data: {counts['train']} training and {counts['val']} validation images of handwritten digits in {data}")
    model_dir = os.path.join(args.out, "model")
    # From scratch (no download needed), small images; flips and rotations would turn digits into other digits.
    status = train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", model_dir, "--weights", "none",
                         "--image-size", "32", "-e", str(args.epochs), "-lr", "1e-3", "--no-augment",
                         "--workers", str(args.workers), "--device", "cpu"])
    if status:
        return status
    print(f"\ndemo done. Model: {model_dir}/best.pth; training curves: tensorboard --logdir {model_dir}/tensorboard")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
