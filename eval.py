"""Evaluate a checkpoint on a validation folder: metrics, scores and a picture per pair.

Example:
    python eval.py -v data/val -o runs/exp1/eval -c runs/exp1/best.pth
    python eval.py -v data/val -o runs/exp1/eval -c runs/exp1/best.pth --n-way 20 --trials 400
    python eval.py -v data/val -o runs/exp1/eval -c runs/exp1/best.pth --baselines   # beside raw pixels and LBP

Writes metrics.json, scores.csv, roc.png, errors.png and pairs/*.jpg into the out path.
"""

import argparse

from siamese.errors import cli


def add_evaluation_options(p):
    """Options shared with eval_tensorrt.py, so both scripts score the same pairs the same way."""
    p.add_argument("-v", "--val_path", "--val-path", required=True, type=str, help="folder: ROOT/ClassName/image")
    p.add_argument("-o", "--out_path", "--out-path", required=True, type=str, help="folder for the results")
    p.add_argument("--seed", default=1, type=int, help="the evaluation pairs are a function of the files and this seed")
    p.add_argument("--pairs", default=None, type=str,
                   help="score this pair list instead (CSV 'left,right,same', paths relative to the folder or its parent)")
    p.add_argument("--pairs-per-image", default=1, type=int, help="pairs drawn per image (without --pairs)")
    p.add_argument("--batch-size", default=None, type=int,
                   help="images per batch (default: 64 on a GPU; on a CPU about 320,000 pixels, so 8 at 224 px and 64 at "
                        "64 px, which ran fastest), or pairs per batch on ONNX Runtime (default 64)")
    p.add_argument("--workers", default=2, type=int,
                   help="threads writing pair pictures, and image loading processes on a GPU (on a CPU, images "
                        "load in the main process: loader processes would only compete with the backbone)")
    p.add_argument("--threshold", default=None, type=float,
                   help="similarity at or above which a pair is called 'same' (default: the threshold calibrated in "
                        "training, else 0.5)")
    p.add_argument("--threshold-at-far", default=None, type=float,
                   help="set the threshold on these pairs instead: the lowest at which at most this fraction of the "
                        "different-class pairs is called 'same' (a false accept rate, e.g. 0.01); reported with the "
                        "true accept rate it gives")
    p.add_argument("--max-pictures", default=None, type=int, help="write at most this many pair pictures (default: all)")
    add_one_shot_options(p)
    p.add_argument("--baselines", action="store_true",
                   help="also score the same pairs and trials with no-learning baselines (raw-pixel cosine "
                        "similarity, LBP histograms) and report them beside the model")
    p.add_argument("--retrieval", action="store_true",
                   help="also rank, for every image, all the other images by similarity (leave-one-out retrieval): "
                        "CMC at ranks 1, 5 and 10, mAP, rank-1 by the features' cosine, and open-set identification "
                        "with half the classes (seeded) left out of the gallery; writes cmc.png")
    return p


def add_one_shot_options(p):
    """N-way one-shot trials and the class groups they may be drawn within (shared with crossval.py)."""
    p.add_argument("--n-way", default=0, type=int, help="also run N-way one-shot trials (0: off)")
    p.add_argument("--trials", default=400, type=int, help="number of one-shot trials")
    p.add_argument("--within-group", action="store_true",
                   help="draw the N classes of each one-shot trial from one group (--group-regex or --group-csv), "
                        "e.g. one alphabet (Lake et al. 2015)")
    p.add_argument("--group-regex", default=None, type=str,
                   help="the group of a class: the first capture group (or match) in its name, e.g. "
                        "'(.+)_character[0-9]+$' for Omniglot's alphabets")
    p.add_argument("--group-csv", default=None, type=str, help="CSV 'class,group' naming the group of every class")


def evaluation_settings(args):
    """run_evaluation()'s keyword arguments from the options add_evaluation_options() defines."""
    return dict(val_path=args.val_path, out_path=args.out_path, seed=args.seed, pairs_file=args.pairs,
                pairs_per_image=args.pairs_per_image, threshold=args.threshold,
                threshold_at_far=args.threshold_at_far, n_way=args.n_way, trials=args.trials,
                within_group=args.within_group, group_regex=args.group_regex, group_csv=args.group_csv,
                baselines=args.baselines, retrieval=args.retrieval, max_pictures=args.max_pictures, workers=args.workers)


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-c", "--checkpoint", required=True, type=str, help="a .pth written by train.py (or the original toolkit)")
    add_evaluation_options(p)
    p.add_argument("--device", default="auto", type=str, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="mixed precision: float16 on CUDA, bfloat16 on CPUs")
    return p


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    from siamese.checkpoint import load_model
    from siamese.distributed import resolve_device
    from siamese.evaluate import run_evaluation
    from siamese.predict import TorchPredictor

    device = resolve_device(args.device)
    model, checkpoint = load_model(args.checkpoint, device=device)
    predictor = TorchPredictor(model, device=device, batch_size=args.batch_size, workers=args.workers, amp=args.amp)
    run_evaluation(predictor, calibrated_threshold=checkpoint.get("threshold"),
                   extra={"checkpoint": args.checkpoint, "backbone": checkpoint["config"]["backbone"]},
                   **evaluation_settings(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
