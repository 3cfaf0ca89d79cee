"""Evaluate a checkpoint on a validation folder: metrics, scores and a picture per pair.

Example:
    python eval.py -v data/val -o runs/exp1/eval -c runs/exp1/best.pth
    python eval.py -v data/val -o runs/exp1/eval -c runs/exp1/best.pth --n-way 20 --trials 400
    python eval.py -v data/val -o runs/exp1/eval -c runs/exp1/best.pth --baselines   # beside raw pixels and LBP

Writes metrics.json, scores.csv, roc.png, errors.png and pairs/*.jpg into the out path.
"""

from siamese.errors import cli
from siamese.options import add_pytorch_options, script_parser
from siamese.settings import EvaluationSettings, add_options


def get_args_parser():
    p = script_parser(__doc__)
    p.add_argument("-c", "--checkpoint", required=True, type=str, help="a .pth written by train.py (or the original toolkit)")
    add_options(p, settings=EvaluationSettings)
    add_pytorch_options(p)
    return p


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    settings = EvaluationSettings.from_namespace(args)
    from siamese.checkpoint import load_model, training_keys
    from siamese.device import configure_cuda, resolve_device
    from siamese.evaluate import run_evaluation
    from siamese.predict import TorchPredictor

    device = resolve_device(args.device)
    configure_cuda(device, args.tf32)
    model, checkpoint = load_model(args.checkpoint, device=device)
    predictor = TorchPredictor(model, device=device, batch_size=settings.batch_size, workers=settings.workers,
                               amp=args.amp, channels_last=args.channels_last, compile=args.compile)
    run_evaluation(predictor, settings, calibrated_threshold=checkpoint.get("threshold"),
                   extra={"checkpoint": args.checkpoint, "backbone": checkpoint["config"]["backbone"]},
                   training_images=training_keys(checkpoint))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
