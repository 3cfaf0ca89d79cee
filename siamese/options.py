"""The scripts' command lines: one help layout (the whole docstring with its examples, each
option by its canonical kebab-case spelling with its default) and the option groups that
several scripts share, so that no script imports another. No torch here.

Older spellings (--out_path, --train_path, -lr, --engine for a model file) keep working as
hidden aliases: they parse, and --help shows only the canonical name.
"""

import argparse

HIDDEN_ALIASES = {"--out-path", "--engine", "-lr"}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written (examples keep their lines); options without their aliases;
    '(default: X)' added where the help does not already speak of the default."""

    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        shown = [s for s in action.option_strings if "_" not in s and s not in HIDDEN_ALIASES]
        shown = shown or action.option_strings[:1]
        if action.nargs == 0:
            return ", ".join(shown)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(shown[:-1] + [f"{shown[-1]} {metavar}"])

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text.lower() or action.default in (None, False, argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def script_parser(doc):
    """An ArgumentParser whose --help shows the script's whole docstring."""
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)


def add_out_option(p, help, **kwargs):
    """-o/--out, the one spelling of every script's out path (dest out_path)."""
    p.add_argument("-o", "--out", "--out-path", "--out_path", dest="out_path", metavar="PATH", type=str, help=help,
                   **kwargs)


def add_model_option(p, help="a deployed model: .onnx file (ONNX Runtime) or TensorRT engine (with ENGINE.json "
                             "beside it)", **kwargs):
    """-m/--model, a deployed model file (dest engine; --engine is its older spelling)."""
    p.add_argument("-m", "--model", "--engine", dest="engine", metavar="MODEL", type=str, help=help, **kwargs)


def add_evaluation_options(p):
    """Options shared by eval.py and eval_tensorrt.py, so both score the same pairs the same way."""
    p.add_argument("-v", "--val-path", "--val_path", dest="val_path", required=True, type=str,
                   help="folder: ROOT/ClassName/image")
    add_out_option(p, "folder for the results", required=True)
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
                   help="similarity at or above which a pair is called 'same' (default: the threshold stored with "
                        "the model, else 0.5)")
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
