"""Evaluate a deployed model (TensorRT engine or .onnx file) on a validation folder: the same
pairs (same seed), metrics and pictures as eval.py, without PyTorch.

Example:
    python eval_tensorrt.py -v data/val -o runs/exp1/eval_trt --engine runs/exp1/model.engine
"""

import argparse

from eval import add_evaluation_options, evaluation_settings
from siamese.errors import cli


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--engine", required=True, type=str, help="TensorRT engine (with ENGINE.json beside it) or .onnx file")
    return add_evaluation_options(p)


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    from siamese.evaluate import run_evaluation
    from siamese.runtime import load_deployed_model

    model = load_deployed_model(args.engine, batch_size=args.batch_size)
    run_evaluation(model, calibrated_threshold=model.threshold,
                   extra={"engine": args.engine, "backbone": model.metadata.get("siamese.backbone")},
                   **evaluation_settings(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
