"""Cross-validate training settings over classes: k folds of held-out classes, each scored by a
model trained on the other folds, beside no-learning baselines on the same pairs.

Example (ORL: 30 subjects from train/ and val/ together, 5 folds):
    python crossval.py --data ../shared/data/orl_faces/train ../shared/data/orl_faces/val -o runs/cv_orl \\
        --folds 5 --weights none --image-size 64 -e 25

Example (Omniglot: whole alphabets held out, 20-way one-shot within one alphabet):
    python crossval.py --data omniglot/train omniglot/val -o runs/cv_omniglot --folds 4 \\
        --group-regex '(.+)_character[0-9]+$' --n-way 20 --within-group --weights none --image-size 32

Writes OUT/fold_K/ (a training run and its result.json), OUT/crossval.json and OUT/crossval.csv.
Run it again to continue an interrupted cross-validation; --fold K runs one fold. With
--trained-folds EARLIER_OUT it trains nothing and re-scores EARLIER_OUT's fold models with this
run's --flip-average and --shift-average.
"""

import argparse

from eval import add_one_shot_options
from siamese.errors import UserError, cli
from siamese.settings import TrainingSettings, add_options


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, nargs="+", type=str,
                   help="one or more folders in the ROOT/ClassName/image layout, their classes taken together")
    p.add_argument("-o", "--out_path", "--out-path", required=True, type=str, help="folder for the folds and the report")
    p.add_argument("--folds", default=5, type=int, help="number of folds of held-out classes")
    p.add_argument("--fold-seed", default=0, type=int, help="seed of the assignment of classes (or groups) to folds")
    p.add_argument("--fold", default=None, type=int, help="run only this fold (1 to --folds), then report the folds done")
    p.add_argument("--eval-pairs", default="all", type=str,
                   help="held-out pairs: 'all' (every pair of held-out images, for small folds) or N pairs per image "
                        "(same class with probability 0.5, fixed by --eval-seed)")
    p.add_argument("--eval-seed", default=1, type=int, help="seed of the held-out pairs and one-shot trials")
    p.add_argument("--trained-folds", default=None, type=str,
                   help="score the fold models of this earlier crossval.py output instead of training (its options "
                        "all the same but --flip-average and --shift-average, which change only the scoring): tries "
                        "a scoring setting in minutes; the figures go to --out_path")
    # the groups also keep each group's classes in one fold
    add_one_shot_options(p)
    add_options(p, skip=("val_pairs_per_image",))  # the folds train without validation
    return p


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    from siamese.crossval import cross_validate
    from siamese.folds import class_folds, class_groups
    from siamese.images import merge_folders, scan_folder

    pairs = args.eval_pairs
    if pairs != "all":
        if not pairs.isdigit() or int(pairs) < 1:
            raise UserError(f"--eval-pairs must be 'all' or a whole number of pairs per image of at least 1, not '{pairs}'")
        pairs = int(pairs)
    if args.fold is not None and not 1 <= args.fold <= args.folds:
        raise UserError(f"--fold must be between 1 and --folds ({args.folds}), not {args.fold}")
    if args.within_group and not (args.n_way and (args.group_regex or args.group_csv)):
        raise UserError("--within-group needs --n-way and the groups (--group-regex or --group-csv)")
    folder = merge_folders([scan_folder(path, what="data folder") for path in args.data])
    groups = class_groups(folder.classes, regex=args.group_regex, csv_path=args.group_csv)
    held_out = class_folds(folder.classes, groups, folds=args.folds, seed=args.fold_seed)
    training = TrainingSettings.from_namespace(args)
    # what changes the results; workers and batch sizes may differ when a cross-validation continues
    settings = {k: v for k, v in training.to_dict().items()
                if k not in ("workers", "eval_batch_size", "save_after", "val_pairs_per_image")}
    plan = {"data": sorted(args.data), "folds": held_out, "training": settings,
            "eval_pairs": pairs, "eval_seed": args.eval_seed, "n_way": args.n_way,
            "trials": args.trials, "within_group": args.within_group}
    print(f"{len(folder.classes)} classes in {len(set(groups))} groups, {len(folder)} images; "
          f"{args.folds} folds holding out {', '.join(str(len(f)) for f in held_out)} classes")
    cross_validate(folder, groups, held_out, out_path=args.out_path, training=training, plan=plan,
                   pairs_per_image=pairs, n_way=args.n_way, trials=args.trials,
                   within_group=args.within_group, eval_seed=args.eval_seed, only_fold=args.fold,
                   trained_folds=args.trained_folds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
