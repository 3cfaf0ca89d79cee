"""Train a Siamese network on a folder-per-class image tree.

Example (one CPU or GPU):
    python train.py --train-path data/train --val-path data/val -o runs/exp1 -b resnet18 -e 20

Many GPUs or machines (one process per GPU):
    torchrun --nproc_per_node 4 train.py --train-path data/train --val-path data/val -o runs/exp1

Without --val-path (the final model, once cross-validation has chosen the settings and the
number of epochs; see crossval.py):
    python train.py --train-path data/train data/val -o runs/final -b resnet18 -e 20

Again, as recorded (flags given here override the recorded ones):
    python train.py --config runs/exp1/args.json -o runs/exp2 --seed 1

Writes best.pth (with validation), last.pth (for --resume; the final model without validation),
epoch_N.pth, args.json (the run's folders and settings), metrics.csv and tensorboard/ (view with:
tensorboard --logdir runs/exp1) into the out path.
"""

import os

from siamese.options import Several, add_out_option, folder_path, script_parser
from siamese.errors import UserError, cli
from siamese.settings import TrainingSettings, add_options, read_run_record


def get_args_parser():
    p = script_parser(__doc__)
    p.add_argument("--config", default=None, type=str,
                   help="args.json of an earlier run: train with its folders and settings (flags given here override them)")
    p.add_argument("--train-path", "--train_path", dest="train_path", default=None, action=Several, type=folder_path,
                   help="training folder: ROOT/ClassName/image; several folders (given together or one --train-path "
                        "each) train on their classes together (required unless --config gives it)")
    p.add_argument("--val-path", "--val_path", dest="val_path", default=None, type=folder_path,
                   help="validation folder in the same layout (classes not seen in training): picks best.pth and "
                        "calibrates the threshold; without it no epoch is picked and last.pth is the final model")
    add_out_option(p, "folder for checkpoints and logs", required=True)
    p.add_argument("--resume", default=None, type=str, help="continue from this last.pth")
    p.add_argument("--fresh-optimizer", action="store_true",
                   help="with --resume of a checkpoint that holds no optimizer or scheduler state: continue with a "
                        "fresh one (Adam's moments and the schedule restart; refused without this option)")
    add_options(p)
    return p


def parse_args(argv=None):
    """The options; with --config the recorded run's values are the defaults that flags override."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.config:
        parser.set_defaults(**read_run_record(args.config, parser))
        args = parser.parse_args(argv)
    if not args.train_path:
        raise UserError("give --train-path (the training folder), or --config with an earlier run's args.json")
    # args.json records absolute paths: --config works from any folder
    args.train_path = [os.path.abspath(path) for path in args.train_path]
    for name in ("val_path", "out_path", "resume", "config"):
        setattr(args, name, getattr(args, name) and os.path.abspath(getattr(args, name)))
    if args.weights not in ("imagenet", "none"):
        args.weights = os.path.abspath(args.weights)
    return args


def training_folders(paths):
    """Several training folders as one (train/ and val/ together for the final model)."""
    from siamese.images import merge_folders, scan_folder

    return merge_folders([scan_folder(path, what="training folder") for path in paths])


@cli
def main(argv=None):
    args = parse_args(argv)
    from siamese.training import fit  # PyTorch: after the options are read

    settings = TrainingSettings.from_namespace(args)
    train_path = args.train_path[0] if len(args.train_path) == 1 else training_folders(args.train_path)
    record = {"train_path": args.train_path, "val_path": args.val_path, "out_path": args.out_path,
              "resume": args.resume, "config": args.config}
    best = fit(settings, train=train_path, val=args.val_path, out_path=args.out_path, resume=args.resume,
               record=record, fresh_optimizer=args.fresh_optimizer)
    if best is None:  # another process of a torchrun run: the main one reports
        return 0
    if best.get("epoch") is not None:
        where = (f"checkpoints in {args.out_path}" if best["path"] == os.path.join(args.out_path, "best.pth") else
                 f"its best.pth is {best['path']} (from before the resume); this run's checkpoints are in "
                 f"{args.out_path}" if best["path"] else
                 f"no best.pth holds it (it came before the resume; not written to {args.out_path}); this run's "
                 f"checkpoints are in {args.out_path}")
        print(f"best validation AUC {best['auc']:.4f} (EER {best['eer']:.2%}) at epoch {best['epoch']}; {where}")
    elif args.val_path is None:
        print(f"trained {settings.epochs} epochs without validation; the final model is {args.out_path}/last.pth")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
