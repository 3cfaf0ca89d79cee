"""Evaluate a deployed model (TensorRT engine or .onnx file) on a validation folder: the same
pairs (same seed), metrics and pictures as eval.py, without PyTorch.

Example:
    python eval_tensorrt.py -v data/val -o runs/exp1/eval_trt -m runs/exp1/model.engine
"""

from siamese.errors import cli
from siamese.options import add_model_option, script_parser
from siamese.settings import EvaluationSettings, add_options


def get_args_parser():
    p = script_parser(__doc__)
    add_model_option(p, required=True)
    return add_options(p, settings=EvaluationSettings)


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    settings = EvaluationSettings.from_namespace(args)
    from siamese.evaluate import run_evaluation
    from siamese.runtime import load_deployed_model

    model = load_deployed_model(args.engine, batch_size=settings.batch_size)
    run_evaluation(model, settings, calibrated_threshold=model.threshold,
                   extra={"engine": args.engine, "backbone": model.metadata.get("siamese.backbone")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
