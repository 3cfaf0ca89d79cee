"""Cross-validation over classes: train on the classes of all folds but one, score the held-out
fold's classes (never seen in training, never used to pick an epoch) beside the no-learning
baselines on the same pairs, and report each figure's mean and spread over the folds.

Each fold is a training run of its own in OUT/fold_K/ (resumable from its last.pth); its result
is OUT/fold_K/result.json, written once the fold is scored, so an interrupted cross-validation
continues where it stopped. OUT/plan.json fixes the folds and settings: a rerun with others is
refused rather than mixed.

Settings that change only how a trained model scores (SCORING_SETTINGS) can be tried without
training again: `trained_folds` takes each fold's model from an earlier cross-validation of the
same plan otherwise, and scores it with this plan's scoring settings into this OUT.
"""

import json
import os
import time

import numpy as np

from .baselines import BASELINES, RANKING_METRICS, baseline_metrics
from .errors import UserError
from .evaluate import evaluate
from .files import atomic_open, claim_folder, same_path, write_json
from .pairs import all_pairs, evaluation_pairs, one_shot_trials
from .settings import TrainingSettings, flag

SUMMARY_METRICS = RANKING_METRICS + ("one_shot",)
# settings stored in the model that change its scoring, not its training
SCORING_SETTINGS = ("flip_average", "shift_average")


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _plan_differences(earlier, plan, *, ignore=()):
    """The plan entries (and training options) in which `earlier` differs from `plan`, leaving out
    the training settings in `ignore`. A setting the toolkit gained after the earlier plan was
    written, at its default, changes nothing."""
    defaults = TrainingSettings().to_dict()
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


def check_plan(out_path, plan):
    """Write OUT/plan.json, or check that the one there is this plan."""
    path = os.path.join(out_path, "plan.json")
    if os.path.exists(path):
        changed = _plan_differences(_read_json(path), plan)
        if changed:
            raise UserError(f"'{out_path}' holds a cross-validation with other {', '.join(changed)}; continue it with "
                            f"the same options, or give another --out_path")
    else:
        write_json(path, plan)


def check_trained_folds(trained_folds, plan):
    """A UserError unless `trained_folds` holds a cross-validation of this plan but for its scoring
    settings: the same data, folds, evaluation and training."""
    path = os.path.join(trained_folds, "plan.json")
    if not os.path.isfile(path):
        raise UserError(f"--trained-folds '{trained_folds}' holds no cross-validation (no plan.json); give the "
                        f"--out_path of an earlier crossval.py run")
    changed = _plan_differences(_read_json(path), plan, ignore=SCORING_SETTINGS)
    if changed:
        raise UserError(f"--trained-folds '{trained_folds}' was run with other {', '.join(changed)}; only "
                        f"{' and '.join(flag(k) for k in SCORING_SETTINGS)} may differ from it")


def _fold_metrics(result):
    metrics = {key: result.metrics[key] for key in RANKING_METRICS}
    if result.one_shot:
        metrics["one_shot"] = result.one_shot["accuracy"]
    return metrics


def run_fold(folder, held_out, groups, *, index, out_path, training, pairs_per_image, n_way, trials, within_group,
             eval_seed, trained_folds=None, log=print):
    """Train (or continue) fold `index` and score its held-out classes; returns its result dict.
    With `trained_folds`, score that cross-validation's model of the fold instead of training one."""
    from .checkpoint import load_checkpoint, load_model
    from .distributed import resolve_device
    from .predict import TorchPredictor
    from .training import fit

    fold_dir = os.path.join(out_path, f"fold_{index}")
    result_path = os.path.join(fold_dir, "result.json")
    if os.path.exists(result_path):
        log(f"fold {index}: already scored ({result_path})")
        return _read_json(result_path)
    kept = [name for name in folder.classes if name not in set(held_out)]
    train_folder, test_folder = folder.subset(kept), folder.subset(held_out)
    last = os.path.join(trained_folds or out_path, f"fold_{index}", "last.pth")
    done_epochs = load_checkpoint(last)["epoch"] if os.path.exists(last) else 0
    if trained_folds and done_epochs < training.epochs:
        raise UserError(f"fold {index} of --trained-folds '{trained_folds}' is not trained to its {training.epochs} "
                        f"epochs yet; finish it there first (crossval.py with its options and --fold {index})")
    start = time.perf_counter()
    if done_epochs < training.epochs:
        log(f"fold {index}: training on {len(kept)} classes, holding out {len(held_out)}"
            + (f" (continuing after epoch {done_epochs})" if done_epochs else ""))
        fit(training, train=train_folder, out_path=fold_dir, resume=last if done_epochs else None,
            record={"fold": index, "held_out": held_out}, log=log)
    seconds = time.perf_counter() - start

    test_groups = [groups[folder.classes.index(name)] for name in test_folder.classes]
    pairs = (all_pairs(test_folder) if pairs_per_image == "all" else
             evaluation_pairs(test_folder, seed=eval_seed, pairs_per_image=pairs_per_image))
    shots = (one_shot_trials(test_folder, n_way=n_way, trials=trials, seed=eval_seed,
                             groups=test_groups if within_group else None) if n_way else None)
    device = resolve_device(training.device)
    model, _ = load_model(last, device=device)
    model.config.update({key: getattr(training, key) for key in SCORING_SETTINGS})  # the same with a fold trained here
    result = evaluate(TorchPredictor(model, device=device, batch_size=training.eval_batch_size), pairs, trials=shots)
    fold_result = {
        "fold": index, "held_out": sorted(held_out), "held_out_groups": sorted(set(test_groups)),
        "train_classes": len(kept), "test_images": len(test_folder), "pairs": len(pairs),
        "positive_pairs": int(sum(p.same for p in pairs)), "trials": len(shots) if shots else 0,
        "training_seconds": round(seconds, 1) if done_epochs < training.epochs else None,
        **({"trained_in": os.path.abspath(last)} if trained_folds else {}),
        "model": _fold_metrics(result),
        "baselines": {name: {k: (v["accuracy"] if k == "one_shot" else v) for k, v in metrics.items()}
                      for name, metrics in baseline_metrics(pairs, trials=shots).items()},
    }
    os.makedirs(fold_dir, exist_ok=True)
    write_json(result_path, fold_result)
    return fold_result


def summarize(fold_results):
    """{system: {metric: {'mean', 'std', 'folds'}}} over the folds, std with ddof=1 (0 for one fold)."""
    systems = ["model"] + [name for name in BASELINES if name in fold_results[0]["baselines"]]
    summary = {}
    for system in systems:
        rows = [r["model"] if system == "model" else r["baselines"][system] for r in fold_results]
        summary[system] = {}
        for metric in SUMMARY_METRICS:
            values = [row[metric] for row in rows if metric in row]
            if len(values) == len(rows):
                array = np.asarray(values, dtype=np.float64)
                summary[system][metric] = {"mean": float(array.mean()),
                                           "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
                                           "folds": [float(v) for v in array]}
    baselines = [s for s in systems if s != "model"]
    summary["model_above_baselines"] = {
        metric: int(sum(all(r["model"][metric] > r["baselines"][b][metric] for b in baselines) for r in fold_results))
        for metric in ("auc", "one_shot") if all(metric in r["model"] for r in fold_results)}
    return summary


def format_table(summary, folds_done, folds_total):
    """Lines for a person: one row per system, each metric as mean ± std over the folds."""
    names = {"auc": "ROC-AUC", "eer": "EER", "tar_at_far_1e-2": "TAR@FAR1e-2", "tar_at_far_1e-3": "TAR@FAR1e-3",
             "one_shot": "one-shot"}
    metrics = [m for m in SUMMARY_METRICS if m in summary["model"]]
    percent = {"eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "one_shot"}
    header = f"{'':<22}" + "".join(f"{names[m]:>18}" for m in metrics)
    lines = [f"cross-validation over classes: {folds_done} of {folds_total} folds", header]
    labels = {"model": "model", "pixels": "raw pixels (cosine)", "lbp": "LBP (chi-square)"}
    for system in [s for s in summary if s != "model_above_baselines"]:
        cells = []
        for m in metrics:
            v = summary[system].get(m)
            if v is None:
                cells.append(f"{'-':>18}")
            elif m in percent:
                cells.append(f"{100 * v['mean']:>10.1f} ± {100 * v['std']:4.1f}%")
            else:
                cells.append(f"{v['mean']:>11.4f} ± {v['std']:.3f}")
        lines.append(f"{labels.get(system, system):<22}" + "".join(cells))
    for metric, count in summary["model_above_baselines"].items():
        lines.append(f"model above every baseline in {names[metric]}: {count} of {folds_done} folds")
    return lines


def write_summary(out_path, fold_results, folds_total):
    """OUT/crossval.json and OUT/crossval.csv (one row per system and metric, a column per fold)."""
    summary = summarize(fold_results)
    write_json(os.path.join(out_path, "crossval.json"),
                {"folds_done": len(fold_results), "folds": folds_total, "summary": summary, "per_fold": fold_results})
    with atomic_open(os.path.join(out_path, "crossval.csv"), "w", newline="") as f:
        f.write("system,metric,mean,std," + ",".join(f"fold_{r['fold']}" for r in fold_results) + "\n")
        for system, metrics in summary.items():
            if system == "model_above_baselines":
                continue
            for metric, v in metrics.items():
                f.write(f"{system},{metric},{v['mean']:.6g},{v['std']:.6g}," + ",".join(f"{x:.6g}" for x in v["folds"])
                        + "\n")
    return summary


def cross_validate(folder, groups, held_out_folds, *, out_path, training, plan, pairs_per_image=5, n_way=0, trials=400,
                   within_group=False, eval_seed=1, only_fold=None, trained_folds=None, log=print):
    """Run every fold (or only_fold, 1-based) and write the summary of the folds scored so far.
    `plan` (the folds and every setting that changes results) must match OUT/plan.json, if any,
    and `trained_folds`'s plan but for the scoring settings."""
    indices = range(1, len(held_out_folds) + 1) if only_fold is None else [only_fold]
    if trained_folds:
        if same_path(trained_folds, out_path):
            raise UserError("--trained-folds is the cross-validation whose models are re-scored; give another "
                            "--out_path for the new figures, so that its own are kept")
        check_trained_folds(trained_folds, plan)
    with claim_folder(out_path, what="cross-validation out path"):  # one cross-validation at a time per path
        check_plan(out_path, plan)
        for index in indices:
            run_fold(folder, held_out_folds[index - 1], groups, index=index, out_path=out_path, training=training,
                     pairs_per_image=pairs_per_image, n_way=n_way, trials=trials, within_group=within_group,
                     eval_seed=eval_seed, trained_folds=trained_folds, log=log)
    done = [_read_json(os.path.join(out_path, f"fold_{i}", "result.json")) for i in range(1, len(held_out_folds) + 1)
            if os.path.exists(os.path.join(out_path, f"fold_{i}", "result.json"))]
    summary = write_summary(out_path, done, len(held_out_folds))
    for line in format_table(summary, len(done), len(held_out_folds)):
        log(line)
    log(f"wrote {os.path.join(out_path, 'crossval.json')} and {os.path.join(out_path, 'crossval.csv')}")
    return summary
