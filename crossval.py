"""Cross-validate training settings over classes: k folds of held-out classes, each scored by a
model trained on the other folds, beside no-learning baselines on the same pairs.

Example (ORL: 30 subjects from train/ and val/ together, 5 folds):
    python crossval.py --data ../shared/data/orl_faces/train ../shared/data/orl_faces/val -o runs/cv_orl \\
        --folds 5 --weights none --image-size 64 -e 25

Example (Omniglot: whole alphabets held out, 20-way one-shot within one alphabet):
    python crossval.py --data omniglot/train omniglot/val -o runs/cv_omniglot --folds 4 \\
        --group-regex '(.+)_character[0-9]+$' --n-way 20 --within-group --weights none --image-size 32

Nested (settings chosen on inner folds, reported on classes no choice saw): keep 10 subjects out
of every fold, compare candidate settings on the inner folds, drawn twice, then score the chosen
one once on the 10:
    python crossval.py --data ... -o runs/cv_a --holdout-classes 10 --folds 4 --repeats 2 ...
    python crossval.py --data ... -o runs/cv_b --holdout-classes 10 --folds 4 --repeats 2 ... --against runs/cv_a
    python crossval.py --data ... -o runs/cv_b --holdout-classes 10 --folds 4 --repeats 2 ... --outer

Writes OUT/fold_K/ (a training run and its result.json; OUT/repeat_R/fold_K/ for repeats after
the first, OUT/outer/ for --outer), OUT/crossval.json and OUT/crossval.csv.
Run it again to continue an interrupted cross-validation; --fold K runs one fold. With
--trained-folds EARLIER_OUT it trains nothing and re-scores EARLIER_OUT's fold models with this
run's --flip-average and --shift-average.
"""

from siamese.errors import UserError, cli
from siamese.options import (FAR, MAX_CLASSES, MAX_PAIRS_PER_IMAGE, SEED, Number, Several, add_out_option, folder_path,
                             script_parser, whole)
from siamese.settings import ONE_SHOT_OPTIONS, EvaluationSettings, TrainingSettings, add_options


def get_args_parser():
    p = script_parser(__doc__)
    p.add_argument("--data", required=True, action=Several, type=folder_path,
                   help="one or more folders in the ROOT/ClassName/image layout, their classes taken together")
    add_out_option(p, "folder for the folds and the report", required=True)
    p.add_argument("--folds", default=5, type=whole(2, 1000), help="number of folds of held-out classes")
    p.add_argument("--fold-seed", default=0, type=SEED, help="seed of the assignment of classes (or groups) to folds")
    p.add_argument("--fold", default=None, type=whole(1, 1000),
                   help="run only this fold (1 to --folds), then report the folds done")
    p.add_argument("--repeats", default=1, type=whole(1, 1000),
                   help="draw the folds this many times (repeat R uses fold seed --fold-seed + R - 1), to measure "
                        "how much the figures move with the choice of folds alone")
    p.add_argument("--repeat", default=None, type=whole(1, 1000), help="run only this repeat (1 to --repeats)")
    p.add_argument("--holdout-classes", default=0, type=whole(0, MAX_CLASSES, off=0),
                   help="keep about this many classes (whole groups) out of every fold, drawn by --holdout-seed: "
                        "the outer test set that no choice of settings sees; 0: none")
    p.add_argument("--holdout-seed", default=0, type=SEED, help="seed of the draw of the outer held-out classes")
    p.add_argument("--outer", action="store_true",
                   help="train on every class but the outer held-out ones and score those: run it once, for the "
                        "settings the inner folds chose; its figure is the unbiased one")
    p.add_argument("--against", default=None, type=str,
                   help="compare the inner folds with this earlier crossval.py output of the same folds and other "
                        "training options, and say whether each difference exceeds the spread between repeats")
    p.add_argument("--eval-pairs", default="all", type=Number(int, 1, MAX_PAIRS_PER_IMAGE, word="all"),
                   help="held-out pairs: 'all' (every pair of held-out images, for small folds) or N pairs per image "
                        "(same class with probability 0.5, fixed by --eval-seed)")
    p.add_argument("--eval-seed", default=1, type=SEED, help="seed of the held-out pairs and one-shot trials")
    p.add_argument("--trained-folds", default=None, type=str,
                   help="score the fold models of this earlier crossval.py output instead of training (its options "
                        "all the same but --flip-average and --shift-average, which change only the scoring): tries "
                        "a scoring setting in minutes; the figures go to -o/--out")
    # the groups also keep each group's classes in one fold
    add_options(p, settings=EvaluationSettings, only=ONE_SHOT_OPTIONS)
    p.add_argument("--threshold-at-far", dest="report_far", default=None, type=FAR,
                   help="also report the threshold that gives this false accept rate on each fold's held-out pairs "
                        "(those at the EER, 0.01 and 0.001 are always reported), for the final model's --threshold; "
                        "0: off, as in train.py and eval.py")
    # the folds train without validation and store no threshold
    add_options(p, skip=("val_pairs_per_image", "threshold", "threshold_at_far"))
    return p


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    from siamese.crossval import CrossValidation, FoldScoring, cross_validate, make_plan
    from siamese.folds import class_groups, holdout_classes, repeated_folds
    from siamese.images import merge_folders, scan_folder

    pairs = args.eval_pairs  # 'all' or a number, checked by its type
    if args.fold is not None and not 1 <= args.fold <= args.folds:
        raise UserError(f"--fold must be between 1 and --folds ({args.folds}), not {args.fold}")
    if args.repeat is not None and not 1 <= args.repeat <= args.repeats:
        raise UserError(f"--repeat must be between 1 and --repeats ({args.repeats}), not {args.repeat}")
    if args.outer and (args.fold is not None or args.repeat is not None):
        raise UserError("--outer trains on every inner class and scores the held-out ones; leave out --fold and --repeat")
    if args.within_group and not (args.n_way and (args.group_regex or args.group_csv)):
        raise UserError("--within-group needs --n-way and the groups (--group-regex or --group-csv)")
    folder = merge_folders([scan_folder(path, what="data folder") for path in args.data])
    groups = class_groups(folder.classes, regex=args.group_regex, csv_path=args.group_csv)
    holdout = (holdout_classes(folder.classes, groups, count=args.holdout_classes, seed=args.holdout_seed)
               if args.holdout_classes else [])
    inner = [(name, group) for name, group in zip(folder.classes, groups) if name not in set(holdout)]
    repeat_folds = repeated_folds([n for n, _ in inner], [g for _, g in inner], folds=args.folds,
                                  seed=args.fold_seed, repeats=args.repeats)
    training = TrainingSettings.from_namespace(args)
    scoring = FoldScoring(pairs_per_image=pairs, n_way=args.n_way, trials=args.trials, within_group=args.within_group,
                          eval_seed=args.eval_seed, report_far=args.report_far or None)
    print(f"{len(folder.classes)} classes in {len(set(groups))} groups, {len(folder)} images; "
          + (f"{len(holdout)} kept out of every fold (outer); " if holdout else "")
          + f"{args.folds} folds holding out {', '.join(str(len(f)) for f in repeat_folds[0])} classes"
          + (f", drawn {args.repeats} times" if args.repeats > 1 else ""))
    cv = CrossValidation(folder, dict(zip(folder.classes, groups)), repeat_folds, args.out_path, training, scoring,
                         plan=make_plan(args.data, repeat_folds, holdout, training, scoring), holdout=tuple(holdout),
                         trained_folds=args.trained_folds)
    cross_validate(cv, outer=args.outer, only_fold=args.fold, only_repeat=args.repeat, against=args.against)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
