"""The one evaluation routine, shared by train.py's validation, eval.py and eval_tensorrt.py.

It takes a scorer (scoring.py: a PyTorch predictor, a deployed model or a baseline) and a pair
list, and returns the scores and the metrics. No torch here: the TensorRT and ONNX Runtime
models use it on machines without PyTorch.
"""

import os
import sys
from dataclasses import dataclass, field

import numpy as np

from .baselines import BASELINES, RANKING_METRICS, make_baseline
from .errors import UserError, check_between
from .metrics import TIE, auc_intervals_over_classes, one_shot_accuracy, threshold_at_far, verification_metrics
from .scoring import score_pairs

DEFAULT_THRESHOLD = 0.5


@dataclass
class Evaluation:
    pairs: list
    scores: np.ndarray
    metrics: dict
    one_shot: dict = field(default=None)

    @property
    def labels(self):
        return np.array([p.same for p in self.pairs], dtype=bool)


def resolve_threshold(requested=None, calibrated=None):
    """(threshold, where it came from): --threshold, else the one calibrated in training, else 0.5."""
    if requested is not None:
        return float(check_between(requested, 0.0, 1.0, "--threshold")), "--threshold"
    if calibrated is not None:
        return float(calibrated), "the model's: calibrated on validation or given to train.py"
    return DEFAULT_THRESHOLD, "default: the model stores none (train.py --val-path or --threshold stores one)"


def evaluate(predictor, pairs, *, threshold=DEFAULT_THRESHOLD, far=None, trials=None, progress=False):
    """Scores and metrics of the pairs (and one-shot trials); with `far`, the threshold is set on
    these pairs at that false accept rate (metrics['threshold_at_far']) instead of `threshold`."""
    verification = [(p.left, p.right) for p in pairs]
    one_shot_pairs = [(t.query, candidate) for t in trials or () for candidate in t.candidates]
    # One call for both: every distinct image is then embedded once.
    all_scores = np.asarray(score_pairs(predictor, verification + one_shot_pairs, progress=progress), dtype=np.float64)
    scores = all_scores[:len(verification)]
    labels = [p.same for p in pairs]
    at_far = threshold_at_far(scores, labels, far) if far else None
    metrics = verification_metrics(scores, labels, at_far["threshold"] if at_far else threshold)
    if at_far:
        metrics["threshold_at_far"] = {"far_target": far, **at_far}
    one_shot = None
    if trials:
        similarities = all_scores[len(verification):].reshape(len(trials), -1)
        one_shot = {"n_way": int(similarities.shape[1]), "trials": len(trials),
                    "accuracy": one_shot_accuracy(similarities, [t.answer for t in trials])}
        metrics["one_shot"] = one_shot
    return Evaluation(pairs=list(pairs), scores=scores, metrics=metrics, one_shot=one_shot)


def baseline_evaluations(pairs, *, trials=None, names=BASELINES, progress=False):
    """{name: Evaluation} of each baseline on these pairs and trials."""
    return {name: evaluate(make_baseline(name), pairs, trials=trials, progress=progress) for name in names}


def baseline_metrics(pairs, *, trials=None, names=BASELINES, progress=False, evaluations=None):
    """{name: ranking metrics (and one-shot accuracy)} for each baseline on these pairs and trials
    (from `evaluations`, baseline_evaluations' answer, when given)."""
    evaluations = evaluations or baseline_evaluations(pairs, trials=trials, names=names, progress=progress)
    results = {}
    for name, result in evaluations.items():
        results[name] = {key: result.metrics[key] for key in RANKING_METRICS if key in result.metrics}
        if result.one_shot:
            results[name]["one_shot"] = result.one_shot
    return results


def summary(metrics, *, classes=None, threshold_source=None):
    """Readable lines for a person."""
    m = metrics
    lines = [f"pairs: {m['pairs']} ({m['positive_pairs']} same, {m['negative_pairs']} different)"
             + (f" over {classes} classes" if classes is not None else "")]
    lines.append(f"BCE loss: {m['loss']:.4f}")
    source = f" ({threshold_source})" if threshold_source else ""
    lines.append(f"accuracy at threshold {m['threshold']:.3f}{source}: {m['accuracy']:.2%}")
    if "auc" in m:
        lines.append(f"ROC-AUC: {m['auc']:.4f}")
        lines.append(f"EER: {m['eer']:.2%} (threshold {m['eer_threshold']:.3f})")
        lines.append(f"best accuracy: {m['best_accuracy']:.2%} at threshold {m['best_threshold']:.3f}")
        lines.append(f"TAR at FAR 1e-2: {m['tar_at_far_1e-2']:.2%}   TAR at FAR 1e-3: {m['tar_at_far_1e-3']:.2%}"
                     f"   (from {m['negative_pairs']} different-class pairs" + unresolved_far_note(m["negative_pairs"]) + ")")
    if m.get("threshold_at_far"):
        t = m["threshold_at_far"]
        lines.append(f"threshold at a false accept rate of {t['far_target']:g}: {t['threshold']:.4f} (true accept rate "
                     f"{t['tar']:.2%}, false accept rate {t['far']:.2%} over {t['negatives']} different-class pairs"
                     + unresolved_far_note(t["negatives"], (t["far_target"],)) + ")")
    if m.get("one_shot"):
        o = m["one_shot"]
        within = " (classes of each trial from one group)" if o.get("within_group") else ""
        lines.append(f"{o['n_way']}-way one-shot accuracy{within}: {o['accuracy']:.2%} over {o['trials']} trials")
    return "\n".join(lines)


def unresolved_far_note(negatives, rates=(1e-2, 1e-3)):
    """'; too few for FAR 1e-3' when the different-class pairs are too few to resolve a rate."""
    coarse = [rate for rate in rates if negatives * rate < 1]
    return f"; too few to resolve FAR {min(coarse):g}: it needs {int(round(1 / min(coarse))):,}" if coarse else ""


def constant_scores_note(scores):
    """A line for a person when every pair got the same similarity, else None. Differences below
    1e-6 are rounding noise, yet they rank the pairs: the ROC-AUC then strays from 0.5 by chance
    (0.536 was seen) and looks like a weak model rather than none."""
    scores = np.asarray(scores)
    if len(scores) < 2 or np.ptp(scores) > TIE:
        return None
    return (f"note: every pair got the same similarity ({scores[0]:.3f}, to within 1e-6): the model does not tell "
            f"these images apart. A backbone trained from scratch can start this way until its BatchNorm statistics "
            f"settle; train longer, or check that this is the checkpoint meant")


def auc_intervals(folder, pairs, result, evaluations):
    """95% intervals of the model's and the baselines' ROC-AUCs, and of the model's lead over
    each, from a bootstrap over `folder`'s classes ({name: [low, high]}; None with fewer than 3)."""
    label = dict(zip(folder.paths, folder.labels))
    left, right = [label[p.left] for p in pairs], [label[p.right] for p in pairs]
    scores = {"model": result.scores, **{name: e.scores for name, e in evaluations.items()}}
    intervals = auc_intervals_over_classes(scores, left, right)
    return {name: list(bounds) for name, bounds in intervals.items()} if intervals else None


def intervals_line(intervals, where, *, labels=None):
    """One line for auc_intervals' answer."""
    leads = [f"over {(labels or {}).get(name, name)} {lo:+.3f} to {hi:+.3f}" for name, (lo, hi) in
             ((key.split(" - ")[1], bounds) for key, bounds in intervals.items() if key.startswith("model - "))]
    lo, hi = intervals["model"]
    return (f"95% intervals over {where} (bootstrap): ROC-AUC {lo:.3f} to {hi:.3f}; the model's lead "
            + ", ".join(leads) + " (a lead whose interval holds 0 is not shown by these figures)")


def _add_baselines(result, folder, shots):
    """The baselines' metrics on the result's pairs, and with the pairs' `folder` (None for a pair
    list, whose images' classes are not known) the bootstrap intervals."""
    evaluations = baseline_evaluations(result.pairs, trials=shots, progress=True)
    result.metrics["baselines"] = baseline_metrics(result.pairs, evaluations=evaluations)
    if folder is not None:
        result.metrics["auc_intervals"] = auc_intervals(folder, result.pairs, result, evaluations)


def baselines_summary(baselines, model_metrics):
    """Lines comparing the model with each baseline on the same pairs (ranking metrics only, and
    the bootstrap intervals when known)."""
    rows = [("model", model_metrics)] + [(f"baseline: {name}", m) for name, m in baselines.items()]
    lines = [f"{'':<20}{'ROC-AUC':>9}{'EER':>8}{'TAR@FAR1e-2':>13}" + ("  one-shot" if "one_shot" in model_metrics else "")]
    for label, m in rows:
        if "auc" not in m:
            continue
        line = f"{label:<20}{m['auc']:>9.4f}{m['eer']:>8.2%}{m['tar_at_far_1e-2']:>13.2%}"
        if "one_shot" in m:
            line += f"{m['one_shot']['accuracy']:>10.2%}"
        lines.append(line)
    if model_metrics.get("auc_intervals"):
        lines.append(intervals_line(model_metrics["auc_intervals"], "these classes"))
    return "\n".join(lines)


EVALUATION_FILES = {"metrics.json", "scores.csv", "roc.png", "errors.png", "cmc.png", "pairs"}


def retrieval_summary(metrics):
    cmc = metrics["cmc"]
    line = (f"retrieval ({metrics['queries']} queries, each against the other {metrics['images'] - 1} images): "
            + ", ".join(f"rank-{k} {v:.2%}" for k, v in cmc.items()) + f", mAP {metrics['map']:.4f}; rank-1 by the "
            f"features' cosine instead of the head {metrics['rank1_feature_cosine']:.2%}")
    if "open_set" in metrics:
        o = metrics["open_set"]
        line += (f"; open set (half the classes unknown): {o['dir']:.2%} identified at a false positive "
                 f"identification rate of {o['fpir']:.2%}")
    return line


def check_evaluation_out_path(out_path):
    """An evaluation replaces its out folder as a whole: refuse a folder that holds anything else
    (a training run, a user's files) rather than replace it."""
    if not os.path.lexists(out_path):
        return
    if not os.path.isdir(out_path):
        raise UserError(f"evaluation out path '{out_path}' is a file; give a folder path")
    other = sorted(n for n in os.listdir(out_path) if not n.startswith(".") and n not in EVALUATION_FILES)
    if other:
        raise UserError(f"evaluation out path '{out_path}' holds files that are not an evaluation's (such as "
                        f"'{other[0]}'); an evaluation replaces its folder as a whole, so give a new or an "
                        f"evaluation's folder")


def check_finite_scores(scores):
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise UserError(f"the model gave {bad} pair(s) a similarity that is not a number (NaN or infinity); its weights "
                        f"are broken (a diverged training run?): use an earlier checkpoint or train again")


def training_overlap(pairs, trials, known, *, folder=None):
    """({'images': scored images that are training images, 'of': images scored}, a warning line or
    None), with `known` the content keys of the model's training images (checkpoint.training_keys);
    the keys of `folder`'s images (the scan of the scored folder) are its scan's, not hashed again."""
    from .content import content_keys, shared_content

    paths = sorted({path for pair in pairs for path in (pair.left, pair.right)}
                   | {path for trial in trials or () for path in (trial.query, *trial.candidates)})
    shared = shared_content(paths, known, keys=folder.keys_for(paths) if folder is not None else content_keys(paths))
    overlap = {"images": len(shared), "of": len(paths)}
    if not shared:
        return overlap, None
    return overlap, (f"warning: {len(shared)} of the {len(paths)} images scored are images this model was trained on "
                     f"(the same file content as its training images, such as '{shared[0][0]}'): these figures do "
                     f"not measure unseen images alone")


def run_evaluation(predictor, settings, *, calibrated_threshold=None, extra=None, log=print, training_images=None):
    """Everything eval.py and eval_tensorrt.py do once they have a predictor: the same pairs
    (a function of the files and the seed, or a given list), metrics, pictures, files; with
    `baselines`, the no-learning baselines on the same pairs and trials. `settings` is an
    EvaluationSettings (its values already checked). With `training_images`, the content keys
    of the model's training images, it says how many of the scored images are among them (also
    in metrics.json: training_overlap)."""
    from .files import atomic_folder, check_not_inside, claim_beside, prepare_output_dir
    from .report import write_report

    s = settings
    val_path, out_path, seed, pairs_file = s.val_path, s.out_path, s.seed, s.pairs_file
    threshold, source = resolve_threshold(s.threshold, calibrated_threshold)
    if s.threshold_at_far is not None:
        source = f"set on these pairs at a false accept rate of {s.threshold_at_far:g}"
    check_not_inside(out_path, [val_path])
    check_evaluation_out_path(out_path)

    folder, pairs, chosen, shots = evaluation_inputs(s, log=log)
    overlap, overlap_line = (training_overlap(pairs, shots, training_images, folder=folder)
                             if training_images is not None else ({}, None))
    if overlap_line:
        print(overlap_line, file=sys.stderr, flush=True)  # now, before the scoring; and again beside the figures
    prepare_output_dir(os.path.dirname(os.path.abspath(out_path)))  # only once the inputs are known to be good
    with claim_beside(out_path, what="evaluation out path"):  # one evaluation at a time into a path
        result = evaluate(predictor, pairs, threshold=threshold, far=s.threshold_at_far, trials=shots, progress=True)
        threshold = result.metrics["threshold"]
        check_finite_scores(result.scores)
        if shots and s.within_group:
            result.metrics["one_shot"]["within_group"] = True
        if s.baselines:
            _add_baselines(result, folder if not pairs_file else None, shots)
        curve = None
        if s.retrieval:
            from .retrieval import retrieval_evaluation

            result.metrics["retrieval"], curve = retrieval_evaluation(predictor, folder, seed=seed, progress=True)
        details = {"classes": len(folder.classes), "threshold_source": source, "seed": seed,
                   "pairs_file": pairs_file, "eval_pairs": chosen, **(extra or {}),
                   **({"training_overlap": overlap} if overlap else {})}
        # The result set appears as a whole, replacing an earlier evaluation's, or not at all.
        with atomic_folder(out_path) as staging:
            paths = write_report(result, staging, threshold=threshold, extra=details, max_pictures=s.max_pictures,
                                 workers=s.workers)
            if curve:
                from .report import cmc_picture

                paths["cmc"] = cmc_picture(curve, os.path.join(staging, "cmc.png"))
    paths = {name: os.path.join(out_path, os.path.basename(path)) for name, path in paths.items()}
    log(summary(result.metrics, classes=len(folder.classes), threshold_source=source))
    if s.baselines:
        log(baselines_summary(result.metrics["baselines"], result.metrics))
    if s.retrieval:
        log(retrieval_summary(result.metrics["retrieval"]))
    for note in (constant_scores_note(result.scores), overlap_line):
        if note:
            log(note)
    log(f"wrote {paths['metrics']}, {paths['scores']}, " + (f"{paths['roc']}, " if "roc" in paths else "")
        + f"{paths['errors']} and {pictures_note(min(len(pairs), s.max_pictures if s.max_pictures is not None else len(pairs)), len(pairs))} in {paths['pictures']}/")
    return result


def evaluation_inputs(settings, *, log=print):
    """(folder, pairs, how they were chosen: 'all', pairs per image or 'file', one-shot trials or
    None) of an evaluation, each checked before anything is written."""
    from .folds import class_groups
    from .images import scan_folder
    from .pairs import default_pairs, one_shot_trials, read_pairs_csv

    s = settings
    folder = scan_folder(s.val_path, what="validation folder", check_images=s.pairs_file is None)
    if s.pairs_file:
        pairs, chosen = read_pairs_csv(s.pairs_file, s.val_path, folder), "file"
    else:
        pairs, chosen, line = default_pairs(folder, seed=s.seed, pairs_per_image=s.pairs_per_image)
        log(line)
    groups = class_groups(folder.classes, regex=s.group_regex, csv_path=s.group_csv) if s.within_group else None
    shots = one_shot_trials(folder, n_way=s.n_way, trials=s.trials, seed=s.seed, groups=groups) if s.n_way else None
    if shots is not None and len(shots) < s.trials:
        log(f"{len(shots):,} distinct {s.n_way}-way one-shot trials, not the {s.trials:,} of --trials: the folder holds "
            f"few more (each trial is scored once)")
    return folder, pairs, chosen, shots


def pictures_note(written, pairs):
    """'a picture of each of the 80 pairs', or 'pictures of 200 of the 3,160 pairs (...)'."""
    if written >= pairs:
        return f"a picture of each of the {pairs:,} pairs"
    return (f"pictures of {written:,} of the {pairs:,} pairs (of each kind, the wrong ones first, then those "
            f"nearest the threshold; --max-pictures sets the number)")
