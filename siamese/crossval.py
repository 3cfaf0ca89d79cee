"""Cross-validation over classes: train on the classes of all folds but one, score the held-out
fold's classes (never seen in training, never used to pick an epoch) beside the no-learning
baselines on the same pairs, and report each figure's mean and spread over the folds.

Each fold is a training run of its own in OUT/fold_K/ (resumable from its last.pth); its result
is OUT/fold_K/result.json, written once the fold is scored, so an interrupted cross-validation
continues where it stopped. OUT/plan.json fixes the folds and settings: a rerun with others is
refused rather than mixed. A fold's folder is reused by what it was made from, never by its name:
its result.json and checkpoint record the fold's identity (`fold_identity`: digests of the
settings, its classes, a digest of its images' content), checked before either is reused, and
result.json the SHA-256 of the checkpoint it scored, so that a fold copied in from a run with
other options or data, or a checkpoint changed since, is refused rather than averaged in.

Choosing settings by the folds' figures makes those figures flatter the choice. With an outer
holdout (OUT/plan.json's `holdout`), those classes are in no fold: the folds choose, and the
chosen settings are then trained on every other class and scored once on the holdout
(OUT/outer/), the one figure no choice has seen. Repeats draw the folds again with other seeds
(OUT/repeat_R/fold_K/), so that the spread between fold choices is measured, and a comparison
with another cross-validation of the same plan (`against`) says whether a difference exceeds it.

Settings that change only how a trained model scores (SCORING_SETTINGS) can be tried without
training again: `trained_folds` takes each fold's model from an earlier cross-validation of the
same plan otherwise, and scores it with this plan's scoring settings into this OUT.
"""

import hashlib
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from .baselines import BASELINES, RANKING_METRICS
from .errors import UserError
from .evaluate import (auc_intervals, baseline_evaluations, baseline_metrics, evaluate, intervals_line,
                       training_overlap, unresolved_far_note)
from .files import atomic_open, check_not_inside, claim_folder, same_path, write_json
from .lineage import content_keys, sha256_of
from .metrics import threshold_at_far
from .pairs import all_pairs, evaluation_pairs, one_shot_trials
from .settings import TrainingSettings, flag

SUMMARY_METRICS = RANKING_METRICS + ("one_shot",)
# settings stored in the model that change its scoring, not its training
SCORING_SETTINGS = ("flip_average", "shift_average")
# plan entries added after plans were first written, at the value an older plan meant
PLAN_DEFAULTS = {"holdout": [], "repeats": 1}
OUTER = "outer"
THRESHOLD_FARS = (1e-2, 1e-3)  # each fold records the thresholds that give these false accept rates


def _read_json(path):
    with open(path) as f:
        return json.load(f)


# What a fold's identity holds, by what a mismatch is called; its model depends on all but 'settings'
# (which adds the scoring settings, which --trained-folds may change).
IDENTITY = {"settings": "settings", "training_settings": "settings", "train_classes": "classes",
            "held_out": "classes", "images": "images"}
MODEL_IDENTITY = ("training_settings", "train_classes", "held_out", "images")


def _digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def fold_identity(cv, folder, held_out, keys):
    """What one fold is made from, as its result.json and checkpoint record it: a digest of the
    plan's settings that change its figures ('settings'), one of those that change its model
    ('training_settings': all but SCORING_SETTINGS and the scoring entries), its training and
    held-out classes, and one digest over the sorted (class, content key) of its images. `keys`
    maps each image path to its lineage.content_keys key. Settings at their defaults are left out,
    so that a setting the toolkit gains later changes no earlier fold's identity."""
    defaults = TrainingSettings().to_dict()
    training = {k: v for k, v in cv.plan["training"].items() if k not in defaults or v != defaults[k]}
    model = {k: v for k, v in training.items() if k not in SCORING_SETTINGS}
    images = sorted(f"{folder.classes[label]}/{keys[path].hex()}" for path, label in zip(folder.paths, folder.labels))
    return {"settings": _digest({"training": training, **cv.scoring.plan_entries()}),
            "training_settings": _digest(model), "train_classes": sorted(set(folder.classes) - set(held_out)),
            "held_out": sorted(held_out), "images": _digest(images)}


def check_identity(recorded, identity, *, fold_dir, what, keys=tuple(IDENTITY)):
    """A UserError unless `recorded` (the fold_identity a fold's `what` records; None when it
    records none) is `identity` in `keys`; the line names the fold folder and what differs."""
    if not isinstance(recorded, dict):
        raise UserError(f"'{fold_dir}' has a {what} from before folds recorded what they were made from; remove "
                        f"'{fold_dir}' to train that fold again")
    differs = [name for name in dict.fromkeys(IDENTITY[k] for k in keys if recorded.get(k) != identity[k])]
    if differs:
        raise UserError(f"'{fold_dir}' holds a {what} made with other {' and '.join(differs)} than this "
                        f"cross-validation; remove '{fold_dir}' to train that fold again, or run with the options "
                        f"and data it was made with")


def _plan_differences(earlier, plan, *, ignore=()):
    """The plan entries (and training options) in which `earlier` differs from `plan`, leaving out
    the training settings in `ignore`. A setting the toolkit gained after the earlier plan was
    written, at its default, changes nothing."""
    defaults = TrainingSettings().to_dict()
    earlier = {**PLAN_DEFAULTS, **earlier}
    plan = {**PLAN_DEFAULTS, **plan}
    earlier_training, training = dict(earlier.get("training", {})), dict(plan.get("training", {}))
    for key, value in training.items():
        if key not in earlier_training and value == defaults.get(key):
            earlier_training[key] = value
    for key in ignore:
        earlier_training.pop(key, None)
        training.pop(key, None)
    changed = sorted(k for k in set(plan) | set(earlier) if k != "training" and plan.get(k) != earlier.get(k))
    changed += sorted((flag(k) if k in defaults else k) for k in set(training) | set(earlier_training)
                      if training.get(k) != earlier_training.get(k))
    return changed


def check_plan(out_path, plan, log=print):
    """Write OUT/plan.json, or check that the one there is this plan. More --repeats than before
    continue it: the earlier repeats' folds stay as they were (the plan holds the first's)."""
    path = os.path.join(out_path, "plan.json")
    if os.path.exists(path):
        earlier = _read_json(path)
        changed = _plan_differences(earlier, plan)
        before = {**PLAN_DEFAULTS, **earlier}["repeats"]
        if changed == ["repeats"] and plan["repeats"] > before:
            added = f"repeat {before + 1}" if plan["repeats"] == before + 1 else f"repeats {before + 1} to {plan['repeats']}"
            log(f"'{out_path}' holds {before} repeat(s) of these folds: adding {added}")
            write_json(path, plan)
        elif changed:
            raise UserError(f"'{out_path}' holds a cross-validation with other {', '.join(changed)}; continue it with "
                            f"the same options, or give another -o/--out")
    else:
        write_json(path, plan)


def check_trained_folds(trained_folds, plan):
    """A UserError unless `trained_folds` holds a cross-validation of this plan but for its scoring
    settings: the same data, folds, evaluation and training."""
    path = os.path.join(trained_folds, "plan.json")
    if not os.path.isfile(path):
        raise UserError(f"--trained-folds '{trained_folds}' holds no cross-validation (no plan.json); give the "
                        f"-o/--out of an earlier crossval.py run")
    changed = _plan_differences(_read_json(path), plan, ignore=SCORING_SETTINGS)
    if changed:
        raise UserError(f"--trained-folds '{trained_folds}' was run with other {', '.join(changed)}; only "
                        f"{' and '.join(flag(k) for k in SCORING_SETTINGS)} may differ from it")


def _fold_metrics(result):
    metrics = {key: result.metrics[key] for key in RANKING_METRICS}
    if result.one_shot:
        metrics["one_shot"] = result.one_shot["accuracy"]
    return metrics


def fold_name(repeat, index):
    """A fold's folder in OUT: fold_K for the first repeat (as before repeats), repeat_R/fold_K after."""
    return f"fold_{index}" if repeat == 1 else os.path.join(f"repeat_{repeat}", f"fold_{index}")


@dataclass(frozen=True)
class FoldScoring:
    """How each fold's held-out classes are scored: pairs per image (a number, or 'all' for every
    pair), one-shot trials (n_way 0: none; within_group: candidates from the query's group), the
    seed of both, and a false accept rate whose threshold is recorded beside THRESHOLD_FARS'."""

    pairs_per_image: object = "all"
    n_way: int = 0
    trials: int = 400
    within_group: bool = False
    eval_seed: int = 1
    report_far: float = None

    def plan_entries(self):
        """What of it changes the figures, as OUT/plan.json names it."""
        return {"eval_pairs": self.pairs_per_image, "eval_seed": self.eval_seed, "n_way": self.n_way,
                "trials": self.trials, "within_group": self.within_group}


@dataclass(frozen=True)
class CrossValidation:
    """One cross-validation: the classes (`folder`, `groups` mapping each class to its group),
    each repeat's held-out class lists (`repeat_folds`, over the classes outside `holdout`), the
    out path, how each fold trains and is scored, and `plan`: the folds and every setting that
    changes results, which OUT/plan.json must match. With `trained_folds`, folds are not trained
    but that earlier cross-validation's models are scored."""

    folder: object
    groups: dict
    repeat_folds: list
    out_path: str
    training: TrainingSettings
    scoring: FoldScoring
    plan: dict
    holdout: tuple = ()
    trained_folds: str = None


def make_plan(data, repeat_folds, holdout, training, scoring):
    """OUT/plan.json's content. Workers and batch sizes may differ when a cross-validation
    continues; the folds train without validation, so its settings are left out too."""
    settings = {k: v for k, v in training.to_dict().items() if k not in (
        "workers", "eval_batch_size", "save_after", "val_pairs_per_image", "threshold", "threshold_at_far")}
    return {"data": sorted(data), "folds": repeat_folds[0], "repeats": len(repeat_folds), "holdout": list(holdout),
            "training": settings, **scoring.plan_entries()}


def _train_fold(cv, train_folder, *, name, label, record, log):
    """Train (or continue) the run OUT/`name`; returns (its last.pth, seconds spent training, or
    None when it was trained already). A last.pth there already must be this fold's: its
    record's fold_identity is checked first."""
    from .checkpoint import load_checkpoint
    from .training import fit

    training, fold_dir = cv.training, os.path.join(cv.out_path, name)
    last = os.path.join(cv.trained_folds or cv.out_path, name, "last.pth")
    done_epochs = 0
    if os.path.exists(last):
        checkpoint = load_checkpoint(last)
        check_identity((checkpoint.get("args") or {}).get("fold_identity"), record["fold_identity"],
                       fold_dir=os.path.dirname(last), what="checkpoint (last.pth)", keys=MODEL_IDENTITY)
        done_epochs = checkpoint["epoch"]
    if cv.trained_folds and done_epochs < training.epochs:
        raise UserError(f"{label} of --trained-folds '{cv.trained_folds}' is not trained to its {training.epochs} "
                        f"epochs yet; finish it there first (crossval.py with its options)")
    if done_epochs >= training.epochs:
        return last, None
    log(f"{label}: training on {len(train_folder.classes)} classes, holding out {len(record['held_out'])}"
        + (f" (continuing after epoch {done_epochs})" if done_epochs else ""))
    start = time.perf_counter()
    fit(training, train=train_folder, out_path=fold_dir, resume=last if done_epochs else None, record=record, log=log)
    return last, time.perf_counter() - start


def _score_fold(cv, test_folder, checkpoint_path):
    """(pairs, one-shot trials, the model's Evaluation, the baselines' Evaluations, a warning line
    or None) on the held-out classes. When the checkpoint records its training images, the
    metrics hold `training_overlap`, and the line says when held-out images are among them."""
    from .checkpoint import load_model, training_keys
    from .device import configure_cuda, resolve_device
    from .predict import TorchPredictor

    s = cv.scoring
    test_groups = [cv.groups[name] for name in test_folder.classes]
    pairs = (all_pairs(test_folder) if s.pairs_per_image == "all" else
             evaluation_pairs(test_folder, seed=s.eval_seed, pairs_per_image=s.pairs_per_image))
    shots = (one_shot_trials(test_folder, n_way=s.n_way, trials=s.trials, seed=s.eval_seed,
                             groups=test_groups if s.within_group else None) if s.n_way else None)
    device = resolve_device(cv.training.device)
    model, checkpoint = load_model(checkpoint_path, device=device)
    # the same as stored with a fold trained here; other values with --trained-folds
    model.config.update({key: getattr(cv.training, key) for key in SCORING_SETTINGS})
    configure_cuda(device, cv.training.tf32)
    predictor = TorchPredictor(model, device=device, batch_size=cv.training.eval_batch_size, workers=cv.training.workers,
                               channels_last=cv.training.channels_last, compile=cv.training.compile)
    result = evaluate(predictor, pairs,
                      trials=shots, progress=True)
    known, line = training_keys(checkpoint), None
    if known is not None:  # held-out images that are copies of training images, under any name
        result.metrics["training_overlap"], line = training_overlap(pairs, shots, known, folder=test_folder)
    return pairs, shots, result, baseline_evaluations(pairs, trials=shots, progress=True), line


def _thresholds(result, report_far):
    """The thresholds that give the EER and the false accept rates THRESHOLD_FARS and report_far."""
    thresholds = {"eer": result.metrics["eer_threshold"]}
    for far in sorted({*THRESHOLD_FARS, *([report_far] if report_far else [])}, reverse=True):
        thresholds[f"far_{far:g}"] = threshold_at_far(result.scores, result.labels, far)["threshold"]
    return thresholds


def scored_result(cv, name, identity):
    """OUT/`name`/result.json's result, or None when the fold is not scored yet; a UserError when
    it is not this fold's (its fold_identity differs or is missing), or when the checkpoint it
    scored is there but no longer the file it scored (checkpoint_sha256)."""
    fold_dir = os.path.join(cv.out_path, name)
    path = os.path.join(fold_dir, "result.json")
    if not os.path.exists(path):
        return None
    try:
        result = _read_json(path)
    except (OSError, ValueError):
        raise UserError(f"'{path}' is not a readable fold result; remove '{fold_dir}' to train that fold again") from None
    check_identity(result.get("fold_identity") if isinstance(result, dict) else None, identity,
                   fold_dir=fold_dir, what="result.json")
    checkpoint = result.get("trained_in") or os.path.join(fold_dir, "last.pth")
    if os.path.exists(checkpoint) and sha256_of(checkpoint) != result.get("checkpoint_sha256"):
        raise UserError(f"'{checkpoint}' has changed since '{path}' scored it; remove '{fold_dir}' to train that "
                        f"fold again, or put back the checkpoint it scored")
    return result


def run_fold(cv, folder, held_out, *, name, record, keys, log=print):
    """Train (or continue) the run OUT/`name` on `folder`'s classes but `held_out`, and score the
    held-out classes; returns its result dict (`record` and the figures), also written to
    OUT/`name`/result.json. It records the thresholds that give the EER and the false accept rates
    THRESHOLD_FARS and the scoring's report_far on the held-out pairs, the fold's identity
    (fold_identity, from `keys`: each image path's content key) and the scored checkpoint's SHA-256."""
    fold_dir = os.path.join(cv.out_path, name)
    result_path = os.path.join(fold_dir, "result.json")
    label = name.replace(os.sep, " ").replace("_", " ")
    identity = fold_identity(cv, folder, held_out, keys)
    done = scored_result(cv, name, identity)
    if done is not None:
        log(f"{label}: already scored ({result_path})")
        return done
    kept = [name for name in folder.classes if name not in set(held_out)]
    train_folder, test_folder = folder.subset(kept), folder.subset(held_out)
    last, seconds = _train_fold(cv, train_folder, name=name, label=label,
                                record={**record, "held_out": held_out, "fold_identity": identity}, log=log)
    log(f"{label}: scoring {len(test_folder)} held-out images")
    pairs, shots, result, evaluations, overlap_line = _score_fold(cv, test_folder, last)
    if overlap_line:
        log(f"{label}: {overlap_line}")
    baselines = baseline_metrics(pairs, evaluations=evaluations)
    fold_result = {
        **record, "held_out": sorted(held_out),
        "held_out_groups": sorted({cv.groups[name] for name in test_folder.classes}),
        "train_classes": len(kept), "test_images": len(test_folder), "pairs": len(pairs),
        "positive_pairs": int(sum(p.same for p in pairs)), "trials": len(shots) if shots else 0,
        "training_seconds": round(seconds, 1) if seconds is not None else None,
        **({"trained_in": os.path.abspath(last)} if cv.trained_folds else {}),
        "model": _fold_metrics(result), "thresholds": _thresholds(result, cv.scoring.report_far),
        **{key: result.metrics[key] for key in ("training_overlap",) if key in result.metrics},
        "fold_identity": identity, "checkpoint_sha256": sha256_of(last),
        "baselines": {name: {k: (v["accuracy"] if k == "one_shot" else v) for k, v in metrics.items()}
                      for name, metrics in baselines.items()},
    }
    if record.get("outer"):  # one set of classes, no spread between folds: how precise is its figure?
        fold_result["auc_intervals"] = auc_intervals(test_folder, pairs, result, evaluations)
    os.makedirs(fold_dir, exist_ok=True)
    write_json(result_path, fold_result)
    return fold_result


def _system_rows(fold_results, system):
    return [r["model"] if system == "model" else r["baselines"][system] for r in fold_results]


def summarize(fold_results):
    """{system: {metric: {'mean', 'std', 'folds'}}} over the folds, std with ddof=1 (0 for one fold).
    With folds of more than one repeat, each metric also has 'repeat_means' and 'repeat_std': the
    spread that drawing other folds alone brings."""
    systems = ["model"] + [name for name in BASELINES if name in fold_results[0]["baselines"]]
    repeats = sorted({r.get("repeat", 1) for r in fold_results})
    summary = {}
    for system in systems:
        rows = _system_rows(fold_results, system)
        summary[system] = {}
        for metric in SUMMARY_METRICS:
            values = [row[metric] for row in rows if metric in row]
            if len(values) == len(rows):
                array = np.asarray(values, dtype=np.float64)
                summary[system][metric] = {"mean": float(array.mean()),
                                           "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
                                           "folds": [float(v) for v in array]}
                if len(repeats) > 1:
                    means = [float(np.mean([row[metric] for row, r in zip(rows, fold_results)
                                            if r.get("repeat", 1) == repeat])) for repeat in repeats]
                    summary[system][metric].update(repeat_means=means, repeat_std=float(np.std(means, ddof=1)))
    keys = [k for k in fold_results[0].get("thresholds", {}) if all(k in r.get("thresholds", {}) for r in fold_results)]
    summary["thresholds"] = {k: {"mean": float(np.mean([r["thresholds"][k] for r in fold_results])),
                                 "std": float(np.std([r["thresholds"][k] for r in fold_results], ddof=1))
                                 if len(fold_results) > 1 else 0.0} for k in keys}
    baselines = [s for s in systems if s != "model"]
    summary["model_above_baselines"] = {
        metric: int(sum(all(r["model"][metric] > r["baselines"][b][metric] for b in baselines) for r in fold_results))
        for metric in ("auc", "one_shot") if all(metric in r["model"] for r in fold_results)}
    return summary


METRIC_NAMES = {"auc": "ROC-AUC", "eer": "EER", "tar_at_far_1e-2": "TAR@FAR1e-2", "tar_at_far_1e-3": "TAR@FAR1e-3",
                "one_shot": "one-shot"}
PERCENT = {"eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "one_shot"}
SYSTEM_LABELS = {"model": "model", "pixels": "raw pixels (cosine)", "lbp": "LBP (chi-square)"}
LOWER_IS_BETTER = {"eer"}


def _value(metric, value, width=18):
    return (f"{100 * value:.1f}%" if metric in PERCENT else f"{value:.4f}").rjust(width)


def format_table(summary, folds_done, folds_total, *, holdout=0, repeats=1, outer=None):
    """Lines for a person: one row per system, each metric as mean ± std over the folds, labelled
    by what the figures can claim; then the outer held-out classes' figures, if scored."""
    metrics = [m for m in SUMMARY_METRICS if m in summary["model"]]
    header = f"{'':<22}" + "".join(f"{METRIC_NAMES[m]:>18}" for m in metrics)
    lines = [f"cross-validation over classes: {folds_done} of {folds_total} folds"
             + (f" ({repeats} repeats of {folds_total // repeats} folds)" if repeats > 1 else ""),
             "  inner folds: settings chosen by these figures are flattered by them; the outer figure below is "
             "the unbiased one" if holdout else
             "  no outer held-out classes: settings chosen by these figures are flattered by them "
             "(keep some out with --holdout-classes)", header]
    for system in [s for s in summary if s not in ("model_above_baselines", "thresholds")]:
        cells = []
        for m in metrics:
            v = summary[system].get(m)
            if v is None:
                cells.append(f"{'-':>18}")
            elif m in PERCENT:
                cells.append(f"{100 * v['mean']:>10.1f} ± {100 * v['std']:4.1f}%")
            else:
                cells.append(f"{v['mean']:>11.4f} ± {v['std']:.3f}")
        lines.append(f"{SYSTEM_LABELS.get(system, system):<22}" + "".join(cells))
    if repeats > 1 and all("repeat_std" in summary["model"][m] for m in metrics):
        spreads = [summary["model"][m]["repeat_std"] for m in metrics]
        lines.append(f"{'model, between repeats':<22}" + "".join(
            f"{'± ' + _value(m, v, width=0):>18}" for m, v in zip(metrics, spreads)))
    for metric, count in summary["model_above_baselines"].items():
        lines.append(f"model above every baseline in {METRIC_NAMES[metric]}: {count} of {folds_done} folds")
    if summary["thresholds"]:
        lines.append(threshold_line(summary["thresholds"], "over the folds' held-out pairs (mean ± std)"))
    if outer is not None:
        lines += outer_lines(outer, metrics)
    elif holdout:
        lines.append(f"outer held-out classes ({holdout}): not scored yet; once the inner folds have chosen the "
                     f"settings, run them once with --outer")
    return lines


def pairs_line(fold_results):
    """On how many pairs each fold's figures rest, and how many different-class ones."""
    pairs = [r["pairs"] for r in fold_results]
    negatives = [r["pairs"] - r["positive_pairs"] for r in fold_results]

    def span(values):
        return f"{min(values):,}" if min(values) == max(values) else f"{min(values):,} to {max(values):,}"

    return (f"each fold's figures rest on {span(pairs)} held-out pairs, {span(negatives)} of them different-class"
            + unresolved_far_note(min(negatives)))


def _threshold_name(key):
    return "at the EER" if key == "eer" else f"at FAR {key[4:]}"


def threshold_line(thresholds, where):
    """The thresholds found, for a final model trained without a validation folder to store."""
    found = ", ".join(f"{_threshold_name(k)} {v['mean']:.4f}" + (f" ± {v['std']:.4f}" if "std" in v else "")
                      for k, v in thresholds.items())
    return f"thresholds {where}: {found} (store one in the final model with train.py --threshold)"


def outer_lines(outer, metrics=SUMMARY_METRICS):
    """The outer held-out classes' figures: the model's and the baselines' on the same pairs."""
    metrics = [m for m in metrics if m in outer["model"]]
    lines = [f"outer held-out classes ({len(outer['held_out'])}, trained on by no run and seen by no choice; "
             f"{outer['pairs']} pairs): the unbiased figure",
             f"{'':<22}" + "".join(f"{METRIC_NAMES[m]:>18}" for m in metrics)]
    for system, values in {"model": outer["model"], **outer["baselines"]}.items():
        lines.append(f"{SYSTEM_LABELS.get(system, system):<22}"
                     + "".join(_value(m, values[m]) if m in values else f"{'-':>18}" for m in metrics))
    if outer.get("auc_intervals"):
        lines.append(intervals_line(outer["auc_intervals"], "the outer classes", labels=SYSTEM_LABELS))
    if outer.get("thresholds"):
        lines.append(threshold_line({k: {"mean": v} for k, v in outer["thresholds"].items()},
                                    "on the outer pairs (for information: choose on the inner folds)"))
    return lines


def compare_lines(earlier, report, *, earlier_path):
    """Lines comparing this cross-validation's inner folds with `earlier`'s (the same plan but the
    training): each metric's difference, on how many folds it holds, and whether it exceeds the
    spread between repeats (the larger of the two runs'), the noise of drawing other folds."""
    pairs = {(r.get("repeat", 1), r["fold"]): r["model"] for r in earlier["per_fold"]}
    common = [(pairs[(r.get("repeat", 1), r["fold"])], r["model"]) for r in report["per_fold"]
              if (r.get("repeat", 1), r["fold"]) in pairs]
    if not common:
        return [f"against '{earlier_path}': no fold scored in both yet"]
    lines = [f"against '{earlier_path}' on the {len(common)} inner folds scored in both (this run minus that one):"]
    for metric in SUMMARY_METRICS:
        if not all(metric in a and metric in b for a, b in common):
            continue
        a = np.array([x[metric] for x, _ in common])
        b = np.array([y[metric] for _, y in common])
        sign = -1 if metric in LOWER_IS_BETTER else 1
        better = int(np.sum(sign * (b - a) > 0))
        scale, unit = (100, " points") if metric in PERCENT else (1, "")
        line = (f"  {METRIC_NAMES[metric]}: {scale * b.mean():.4g} against {scale * a.mean():.4g} "
                f"({scale * (b.mean() - a.mean()):+.4g}{unit}), better on {better} of {len(common)} folds")
        spreads = [s["summary"]["model"][metric].get("repeat_std") for s in (earlier, report)]
        if None in spreads:
            line += "; run both with --repeats 2 or more to tell it from the spread between fold choices"
        else:
            spread = max(spreads)
            verdict = "less than" if abs(b.mean() - a.mean()) < spread else "more than"
            line += f"; {verdict} the spread between fold choices ({scale * spread:.4g}{unit})"
        lines.append(line)
    return lines


def write_summary(out_path, fold_results, folds_total, *, outer=None):
    """OUT/crossval.json and OUT/crossval.csv (one row per system and metric, a column per fold);
    the outer held-out classes' figures, if scored, go to crossval.json's 'outer'."""
    summary = summarize(fold_results)
    report = {"folds_done": len(fold_results), "folds": folds_total, "summary": summary, "per_fold": fold_results,
              "outer": outer}
    write_json(os.path.join(out_path, "crossval.json"), report)
    columns = [fold_name(r.get("repeat", 1), r["fold"]).replace(os.sep, "_") for r in fold_results]
    with atomic_open(os.path.join(out_path, "crossval.csv"), "w", newline="") as f:
        f.write("system,metric,mean,std," + ",".join(columns) + "\n")
        for system, metrics in summary.items():
            if system in ("model_above_baselines", "thresholds"):
                continue
            for metric, v in metrics.items():
                f.write(f"{system},{metric},{v['mean']:.6g},{v['std']:.6g}," + ",".join(f"{x:.6g}" for x in v["folds"])
                        + "\n")
    return report


def check_against(against, plan):
    """The earlier report to compare with: a cross-validation of this plan but its training."""
    path = os.path.join(against, "plan.json")
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(against, "crossval.json")):
        raise UserError(f"--against '{against}' holds no scored cross-validation (no plan.json or crossval.json); "
                        f"give the -o/--out of an earlier crossval.py run")
    earlier = {**PLAN_DEFAULTS, **_read_json(path)}
    changed = sorted(k for k in set(plan) | set(earlier) if k != "training" and {**PLAN_DEFAULTS, **plan}.get(k) != earlier.get(k))
    if changed:
        raise UserError(f"--against '{against}' has other {', '.join(changed)}; only the training options may "
                        f"differ for a comparison of settings on the same folds")
    return _read_json(os.path.join(against, "crossval.json"))


def _scored_folds(cv, inner, keys):
    """The result dicts of the inner folds scored so far, and the outer run's (or None), each
    checked to be the fold of this cross-validation (scored_result)."""
    done = []
    for repeat, folds in enumerate(cv.repeat_folds, start=1):
        for index, held_out in enumerate(folds, start=1):
            name = fold_name(repeat, index)
            done.append(scored_result(cv, name, fold_identity(cv, inner, held_out, keys)))
    outer = scored_result(cv, OUTER, fold_identity(cv, cv.folder, cv.holdout, keys)) if cv.holdout else None
    return [result for result in done if result is not None], outer


def cross_validate(cv, *, outer=False, only_fold=None, only_repeat=None, against=None, log=print):
    """Run every fold of every repeat (or only_fold / only_repeat, 1-based), or with `outer` the
    run that trains on every class but the holdout and scores the holdout; then write and print
    the summary of what is scored so far. `against` names a cross-validation of the same plan but
    the training, compared fold by fold. Returns the summary (None before any inner fold)."""
    if cv.trained_folds:
        if same_path(cv.trained_folds, cv.out_path):
            raise UserError("--trained-folds is the cross-validation whose models are re-scored; give another "
                            "-o/--out for the new figures, so that its own are kept")
        check_trained_folds(cv.trained_folds, cv.plan)
    if outer and not cv.holdout:
        raise UserError("--outer scores the classes kept out by --holdout-classes; give --holdout-classes too")
    earlier = check_against(against, cv.plan) if against else None
    check_not_inside(cv.out_path, cv.folder.folders)  # before anything is written (each fold's training checks it too)
    inner = cv.folder.subset([name for name in cv.folder.classes if name not in set(cv.holdout)])
    runs = [(repeat, index) for repeat in range(1, len(cv.repeat_folds) + 1)
            for index in range(1, len(cv.repeat_folds[0]) + 1)
            if only_repeat in (None, repeat) and only_fold in (None, index)]
    keys = dict(zip(cv.folder.paths, content_keys(cv.folder.paths)))  # what each fold's images are
    with claim_folder(cv.out_path, what="cross-validation out path"):  # one cross-validation at a time per path
        check_plan(cv.out_path, cv.plan, log=log)
        if outer:
            run_fold(cv, cv.folder, list(cv.holdout), name=OUTER, record={"outer": True}, keys=keys, log=log)
        else:
            for repeat, index in runs:
                run_fold(cv, inner, cv.repeat_folds[repeat - 1][index - 1], name=fold_name(repeat, index),
                         record={"fold": index, "repeat": repeat}, keys=keys, log=log)
        done, outer_result = _scored_folds(cv, inner, keys)
    total = len(cv.repeat_folds) * len(cv.repeat_folds[0])
    if not done:
        log(f"no inner fold scored yet in '{cv.out_path}'")
        for line in outer_lines(outer_result) if outer_result else []:
            log(line)
        return None
    report = write_summary(cv.out_path, done, total, outer=outer_result)
    for line in format_table(report["summary"], len(done), total, holdout=len(cv.holdout),
                             repeats=len(cv.repeat_folds), outer=outer_result):
        log(line)
    log(pairs_line(done))
    if earlier is not None:
        for line in compare_lines(earlier, report, earlier_path=against):
            log(line)
    log(f"wrote {os.path.join(cv.out_path, 'crossval.json')} and {os.path.join(cv.out_path, 'crossval.csv')}")
    return report["summary"]
