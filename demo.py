"""The demo: build a small real dataset (scikit-learn's handwritten digits) and run the toolkit
on it end to end on the CPU in a few minutes: train, evaluate, export, score a pair, identify.

Example:
    python demo.py --out runs/demo
"""

import os
import shutil

import eval as eval_script
import identify
import infer_tensorrt
import torch_to_onnx
import train
from siamese.demo import build_digits_dataset
from siamese.options import EPOCHS, WORKERS, add_out_option, script_parser
from siamese.errors import check_workers, cli


def get_args_parser():
    p = script_parser(__doc__)
    add_out_option(p, "folder for the data, the model and the results", default="runs/demo")
    p.add_argument("--epochs", default=6, type=EPOCHS, help="training epochs")
    p.add_argument("--workers", default=None, type=WORKERS,
                   help="data loading worker processes (default: train.py's and eval.py's: 2, or the CPU cores the "
                        "process may use if fewer)")
    return p


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    check_workers(args.workers)  # every option checked before the first of its 1,797 images is written
    data = os.path.join(args.out_path, "data")
    workers = [] if args.workers is None else ["--workers", str(args.workers)]  # else the scripts' default
    train_dir, val_dir, counts = build_digits_dataset(data)
    print(f"demo data: {counts['train']} training and {counts['val']} validation images of handwritten digits in {data}")
    model_dir = os.path.join(args.out_path, "model")
    shutil.rmtree(model_dir, ignore_errors=True)  # the demo's own earlier model: train.py never trains over a run
    # From scratch (no download needed), small images; flips and rotations would turn digits into other digits.
    status = train.main(["--train-path", train_dir, "--val-path", val_dir, "-o", model_dir, "--weights", "none",
                         "--image-size", "32", "-e", str(args.epochs), "--learning-rate", "1e-3", "--no-augment",
                         *workers, "--device", "cpu"])
    if status:
        return status
    checkpoint = os.path.join(model_dir, "best.pth")
    eval_dir = os.path.join(args.out_path, "eval")
    print("\n== evaluation of best.pth on the validation images (eval.py)")
    status = eval_script.main(["-v", val_dir, "-o", eval_dir, "-c", checkpoint, "--n-way", "5", "--trials", "400",
                               "--max-pictures", "200", *workers, "--device", "cpu"])
    if status:
        return status
    onnx_path = os.path.join(args.out_path, "model.onnx")
    print("\n== export to ONNX (torch_to_onnx.py)")
    status = torch_to_onnx.main(["-c", checkpoint, "-o", onnx_path, "--force"])  # the demo's own earlier export
    if status:
        return status
    left, right = (os.path.join(val_dir, "three", sorted(os.listdir(os.path.join(val_dir, "three")))[k]) for k in (0, 1))
    print(f"\n== one pair through ONNX Runtime (infer_tensorrt.py -m {onnx_path})")
    status = infer_tensorrt.main(["--image1", left, "--image2", right, "-m", onnx_path])
    if status:
        return status
    queries = os.path.join(args.out_path, "queries")  # four validation digits, as crops a user would bring
    shutil.rmtree(queries, ignore_errors=True)
    os.makedirs(queries)
    for digit in ("two", "three", "seven", "nine"):
        first = sorted(os.listdir(os.path.join(val_dir, digit)))[0]
        shutil.copy(os.path.join(val_dir, digit, first), os.path.join(queries, f"{digit}_{first}"))
    identify_dir = os.path.join(args.out_path, "identify")
    print(f"\n== who is this? four validation digits against the training digits as the gallery (identify.py -m "
          f"{onnx_path})")
    status = identify.main(["--gallery", train_dir, "--query", queries, "-m", onnx_path, "-o", identify_dir,
                            "--top-k", "3"])
    if status:
        return status
    print(f"\ndemo done.\n  model:            {checkpoint}\n  training curves:  tensorboard --logdir {model_dir}/tensorboard"
          f"\n  evaluation:       {eval_dir}/metrics.json, roc.png, errors.png\n  pair pictures:    {eval_dir}/pairs/"
          f"\n  deployed model:   {onnx_path} (with model.embed.onnx and model.head.onnx)"
          f"\n  identification:   {identify_dir}/matches.csv, pictures/"
          f"\n  as a service:     python serve.py -m {onnx_path} --gallery {train_dir}   (then http://127.0.0.1:8000/)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
