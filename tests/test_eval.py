import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_script
from conftest import make_folder
from siamese.checkpoint import load_model
from siamese.errors import UserError
from siamese.evaluate import evaluate, resolve_threshold, run_evaluation
from siamese.images import scan_folder
from siamese.model import SiameseNetwork
from siamese.pairs import evaluation_pairs, one_shot_trials
from siamese.predict import TorchPredictor, default_batch_size
from siamese.settings import EvaluationSettings
from siamese.scoring import score_pairs


def test_cached_features_equal_the_full_pair_forward(tiny_dataset, trained_checkpoint):
    _, val_dir = tiny_dataset
    model, _ = load_model(trained_checkpoint)
    pairs = [(p.left, p.right) for p in evaluation_pairs(scan_folder(val_dir), seed=0, pairs_per_image=3)]
    predictor = TorchPredictor(model, batch_size=5)
    cached = score_pairs(predictor, pairs)
    with torch.inference_mode():  # every pair through the whole network, the original's way, 7 at a time
        full = np.concatenate([
            torch.sigmoid(model.eval().pair_logits(
                torch.stack([torch.from_numpy(model.preprocessing.load(a)) for a, _ in pairs[i:i + 7]]),
                torch.stack([torch.from_numpy(model.preprocessing.load(b)) for _, b in pairs[i:i + 7]]))).numpy()
            for i in range(0, len(pairs), 7)])
    assert len(cached) == len(pairs) == 54
    np.testing.assert_allclose(cached, full, atol=1e-5, rtol=0)
    assert np.ptp(cached) > 0  # not a constant output


def test_amp_on_cpu_computes_features_in_bfloat16(tiny_dataset, trained_checkpoint):
    _, val_dir = tiny_dataset
    model, _ = load_model(trained_checkpoint)
    paths = scan_folder(val_dir).paths
    exact = TorchPredictor(model).embed_paths(paths)
    mixed = TorchPredictor(model, amp=True).embed_paths(paths)
    assert mixed.dtype == exact.dtype == np.float32  # returned in float32 for the head
    assert not np.array_equal(mixed, exact)  # bfloat16 was used: its 8-bit mantissa rounds
    relative = np.linalg.norm(mixed - exact) / np.linalg.norm(exact)
    assert relative < 0.05


def test_eval_end_to_end(tiny_dataset, trained_checkpoint, tmp_path, capsys):
    _, val_dir = tiny_dataset
    out = str(tmp_path / "eval")
    assert eval_script.main(["-v", val_dir, "-o", out, "-c", trained_checkpoint, "--n-way", "3", "--trials", "20",
                             "--workers", "0", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "ROC-AUC" in printed and "3-way one-shot accuracy" in printed and "calibrated" in printed
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    for key in ("pairs", "classes", "loss", "accuracy", "auc", "eer", "best_threshold", "tar_at_far_1e-2",
                "tar_at_far_1e-3", "one_shot"):
        assert key in metrics
    # every pair of the 18 images by default
    assert metrics["pairs"] == 153 and metrics["classes"] == 3 and metrics["one_shot"]["trials"] == 20
    with open(os.path.join(out, "scores.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 153 and {"left", "right", "left_class", "right_class", "same", "similarity"} <= set(rows[0])
    for name in ("roc.png", "errors.png"):
        assert Image.open(os.path.join(out, name)).size[0] > 100
    pictures = sorted(os.listdir(os.path.join(out, "pairs")))
    assert len(pictures) == 153
    picture = Image.open(os.path.join(out, "pairs", pictures[0]))
    assert pictures[0].endswith(".jpg") and picture.format == "JPEG" and picture.mode == "RGB"
    # same seed, same pairs and scores; --max-pictures limits the pictures
    out2 = str(tmp_path / "eval2")
    assert eval_script.main(["-v", val_dir, "-o", out2, "-c", trained_checkpoint, "--max-pictures", "4",
                             "--workers", "0", "--device", "cpu"]) == 0
    assert open(os.path.join(out2, "scores.csv")).read() == open(os.path.join(out, "scores.csv")).read()
    assert len(os.listdir(os.path.join(out2, "pairs"))) == 4


def test_threshold_order():
    assert resolve_threshold(0.3, 0.7) == (0.3, "--threshold")
    assert resolve_threshold(None, 0.7)[0] == 0.7
    assert resolve_threshold(None, None)[0] == 0.5 and resolve_threshold(None, None)[1].startswith("default")


class _Oracle:
    """Similarity 1 for same-class pairs, 0 otherwise: what a perfect model would say."""

    embeds = True

    def embed_paths(self, paths, progress=False):  # an image's feature: its class folder
        return np.array([os.path.dirname(p) for p in paths])[:, None]

    def score_features(self, features1, features2):
        return (features1[:, 0] == features2[:, 0]).astype(float)


class _Constant(_Oracle):
    def score_features(self, features1, features2):
        return np.full(len(features1), 0.5)


def test_one_shot_oracle_and_constant(tmp_path):
    folder = scan_folder(make_folder(str(tmp_path / "d"), classes=5, per_class=4))
    trials = one_shot_trials(folder, n_way=5, trials=50, seed=0)
    pairs = evaluation_pairs(folder, seed=0)
    assert evaluate(_Oracle(), pairs, trials=trials).one_shot["accuracy"] == 1.0
    assert evaluate(_Oracle(), pairs).metrics["auc"] == 1.0
    assert evaluate(_Constant(), pairs, trials=trials).one_shot["accuracy"] == pytest.approx(1 / 5)


def test_a_constant_model_is_named_as_such(tmp_path):
    val = make_folder(str(tmp_path / "d"), classes=3, per_class=4)
    lines = []
    settings = EvaluationSettings(val_path=val, out_path=str(tmp_path / "out"), max_pictures=0)
    result = run_evaluation(_Constant(), settings, log=lines.append)
    assert result.metrics["auc"] == 0.5
    assert any(line.startswith("note: every pair got the same similarity (0.500, to within 1e-6)") for line in lines)
    lines.clear()
    run_evaluation(_Oracle(), settings, log=lines.append)
    assert not any(line.startswith("note:") for line in lines)


def _error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_input(tiny_dataset, trained_checkpoint, tmp_path, capsys):
    _, val_dir = tiny_dataset
    out = str(tmp_path / "out")
    base = ["--workers", "0", "--device", "cpu"]
    assert eval_script.main(["-v", val_dir, "-o", out, "-c", str(tmp_path / "none.pth"), *base]) == 2
    assert "does not exist" in _error(capsys)
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    assert eval_script.main(["-v", val_dir, "-o", out, "-c", str(junk), *base]) == 2
    assert "not a readable checkpoint" in _error(capsys)
    one_class = make_folder(str(tmp_path / "one"), classes=1)
    assert eval_script.main(["-v", one_class, "-o", out, "-c", trained_checkpoint, *base]) == 2
    assert "only one class" in _error(capsys)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("left,right,same\nclass_0/img_00.png,class_9/img_00.png,0\n")
    assert eval_script.main(["-v", val_dir, "-o", out, "-c", trained_checkpoint, "--pairs", str(pairs), *base]) == 2
    assert "class_9/img_00.png' not found" in _error(capsys)
    pairs.write_text("left,right,same\nclass_0/img_00.png\n")
    assert eval_script.main(["-v", val_dir, "-o", out, "-c", trained_checkpoint, "--pairs", str(pairs), *base]) == 2
    assert "line 2" in _error(capsys)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert eval_script.main(["-v", val_dir, "-o", str(blocker), "-c", trained_checkpoint, *base]) == 2
    assert "is a file" in _error(capsys)
    for option, message in ((["--pairs-per-image", "0"], "--pairs-per-image must be at least 1, not 0"),
                            (["--max-pictures", "-1"], "--max-pictures must be at least 0, not -1"),
                            (["--n-way", "3", "--trials", "0"], "--trials must be at least 1"),
                            (["--n-way", "1"], "--n-way must be at least 2"),
                            (["--workers", "-1"], "--workers must be at least 0, not -1")):
        assert eval_script.main(["-v", val_dir, "-o", out, "-c", trained_checkpoint, *base, *option]) == 2
        assert message in _error(capsys)
    assert not os.path.exists(out)  # nothing was written for the failed runs


@pytest.mark.slow
def test_baselines_are_scored_on_the_same_pairs_with_bootstrap_intervals(tiny_dataset, trained_checkpoint, tmp_path,
                                                                         capsys):
    from siamese.baselines import make_baseline
    from siamese.metrics import verification_metrics

    _, val_dir = tiny_dataset
    out = str(tmp_path / "eval")
    assert eval_script.main(["-v", val_dir, "-o", out, "-c", trained_checkpoint, "--baselines", "--pairs-per-image",
                             "4", "--workers", "0", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    pairs = evaluation_pairs(scan_folder(val_dir), seed=1, pairs_per_image=4)  # eval.py's default seed
    pixels = verification_metrics(score_pairs(make_baseline("pixels"), [(p.left, p.right) for p in pairs]),
                                  [p.same for p in pairs])
    assert metrics["baselines"]["pixels"]["auc"] == pytest.approx(pixels["auc"])  # the model's pairs, scored again
    assert set(metrics["baselines"]) == {"pixels", "lbp"}
    intervals = metrics["auc_intervals"]  # 3 classes: the fewest to resample
    assert set(intervals) == {"model", "pixels", "lbp", "model - pixels", "model - lbp"}
    for name in ("model", "pixels", "lbp"):
        low, high = intervals[name]
        assert 0.0 <= low <= (metrics["auc"] if name == "model" else metrics["baselines"][name]["auc"]) <= high <= 1.0
    assert "95% intervals over these classes (bootstrap): ROC-AUC" in printed and "the model's lead over pixels" in printed


def test_pair_list_is_scored(tiny_dataset, trained_checkpoint, tmp_path):
    _, val_dir = tiny_dataset
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("left,right,same\nclass_0/img_00.png,class_0/img_01.png,1\nclass_0/img_00.png,class_1/img_02.png,0\n"
                     "class_2/img_03.png,class_2/img_04.png,1\n")
    out = str(tmp_path / "out")
    assert eval_script.main(["-v", val_dir, "-o", out, "-c", trained_checkpoint, "--pairs", str(pairs),
                             "--workers", "0", "--device", "cpu"]) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["pairs"] == 3 and metrics["positive_pairs"] == 2
    # a pair list's images have no known classes: baselines, but no bootstrap over classes
    assert eval_script.main(["-v", val_dir, "-o", out, "-c", trained_checkpoint, "--pairs", str(pairs), "--baselines",
                             "--workers", "0", "--device", "cpu"]) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert set(metrics["baselines"]) == {"pixels", "lbp"} and "auc_intervals" not in metrics


def test_default_batch_size_follows_the_image_size_on_a_cpu():
    assert [default_batch_size("cpu", size) for size in (224, 128, 64, 32)] == [8, 16, 64, 256]
    assert default_batch_size("cuda", 224) == default_batch_size("cuda:1", 32) == 256
    model = SiameseNetwork("resnet18", image_size=32)
    assert TorchPredictor(model).batch_size == 256 and TorchPredictor(model, batch_size=5).batch_size == 5
    with pytest.raises(UserError, match="at least 1"):
        TorchPredictor(model, batch_size=0)


def test_images_load_in_the_main_process_on_a_cpu(tiny_dataset, trained_checkpoint, monkeypatch):
    import siamese.predict

    seen = []
    real = siamese.predict.DataLoader

    def spy(*args, **kwargs):
        seen.append(kwargs["num_workers"])
        return real(*args, **kwargs)

    monkeypatch.setattr(siamese.predict, "DataLoader", spy)
    model, _ = load_model(trained_checkpoint)
    TorchPredictor(model, workers=2).embed_paths(scan_folder(tiny_dataset[1]).paths)
    assert seen == [0]


def test_bad_batch_size_is_one_line(tiny_dataset, trained_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert eval_script.main(["-v", tiny_dataset[1], "-o", out, "-c", trained_checkpoint, "--batch-size", "-4",
                             "--device", "cpu"]) == 2
    assert "--batch-size must be at least 1" in _error(capsys)
    assert not os.path.exists(out)


def test_threshold_at_far_is_set_on_the_pairs_and_shown(tiny_dataset, trained_checkpoint, tmp_path, capsys):
    from siamese.metrics import threshold_at_far

    out = str(tmp_path / "eval")
    assert eval_script.main(["-v", tiny_dataset[1], "-o", out, "-c", trained_checkpoint, "--threshold-at-far", "0.2",
                             "--workers", "0", "--device", "cpu", "--max-pictures", "2"]) == 0
    printed = capsys.readouterr().out
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    with open(os.path.join(out, "scores.csv")) as f:
        rows = list(csv.DictReader(f))
    expected = threshold_at_far([float(r["similarity"]) for r in rows], [r["same"] in ("1", "True") for r in rows], 0.2)
    assert metrics["threshold"] == pytest.approx(expected["threshold"]) and metrics["threshold_at_far"]["far"] <= 0.2
    assert "set on these pairs at a false accept rate of 0.2" in printed
    assert "threshold at a false accept rate of 0.2:" in printed and "too few to resolve FAR 0.001" in printed
    assert eval_script.main(["-v", tiny_dataset[1], "-o", str(tmp_path / "e2"), "-c", trained_checkpoint,
                             "--threshold", "0.4", "--threshold-at-far", "0.2"]) == 2
    assert "not both" in capsys.readouterr().err and not os.path.exists(str(tmp_path / "e2"))


def _scored_counts(out, printed):
    """(rows of scores.csv, metrics.json), after checking that the pairs printed and in
    metrics.json are those in scores.csv: distinct pairs, and the same and different ones."""
    with open(os.path.join(out, "scores.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    same = sum(r["same"] == "1" for r in rows)
    assert len({frozenset((r["left"], r["right"])) for r in rows}) == len(rows) == metrics["pairs"]
    assert all(r["left"] != r["right"] for r in rows)
    assert (metrics["positive_pairs"], metrics["negative_pairs"]) == (same, len(rows) - same)
    assert f"pairs: {len(rows)} ({same} same, {len(rows) - same} different)" in printed
    assert f"scoring {len(rows):,} distinct pairs ({same:,} same-class, {len(rows) - same:,} different-class)" in printed
    return rows, metrics


@pytest.mark.slow
def test_counts_match_what_was_scored_at_the_bound(tmp_path):
    """47 classes of 3 images make 9,870 pairs, all scored; with one image more eval.py said 9,940
    pairs and scored 4,087 distinct ones, each same-class pair about 34 times."""
    from siamese.baselines import PixelCosine

    val = make_folder(str(tmp_path / "val"), classes=47, per_class=3, size=12)
    settings = EvaluationSettings(val_path=val, out_path=str(tmp_path / "out"), max_pictures=0, workers=0)
    lines = []
    run_evaluation(PixelCosine(size=8), settings, log=lines.append)  # 64 numbers an image: fast
    rows, metrics = _scored_counts(settings.out_path, "\n".join(lines))
    assert (len(rows), metrics["positive_pairs"], metrics["eval_pairs"]) == (9870, 141, "all")
    Image.new("RGB", (12, 12), (9, 99, 199)).save(os.path.join(val, "class_0", "one_more.png"))
    lines.clear()
    run_evaluation(PixelCosine(size=8), settings, log=lines.append)
    rows, metrics = _scored_counts(settings.out_path, "\n".join(lines))
    assert (len(rows), metrics["positive_pairs"], metrics["eval_pairs"]) == (10_000, 144, "drawn")  # every same pair


@pytest.mark.parametrize("bound, extra, how", [(153, [], "all"), (152, [], "drawn"),  # 18 images make 153 pairs
                                               pytest.param(153, ["--pairs-per-image", "12"], 12,  # more than the
                                                            marks=pytest.mark.slow)])  # 17 partners allow
def test_eval_and_eval_tensorrt_count_and_score_the_same_distinct_pairs(trained_checkpoint, onnx_model, tiny_dataset,
                                                                        tmp_path, capsys, monkeypatch, bound, extra,
                                                                        how):
    import eval_tensorrt
    import siamese.pairs

    monkeypatch.setattr(siamese.pairs, "ALL_PAIRS_BOUND", bound)
    common = ["-v", tiny_dataset[1], "--max-pictures", "0", "--workers", "0", *extra]
    scored = []
    for name, run, model in (("eval", eval_script.main, ["-c", trained_checkpoint, "--device", "cpu"]),
                             ("trt", eval_tensorrt.main, ["--engine", onnx_model])):
        assert run([*common, "-o", str(tmp_path / name), *model]) == 0
        rows, metrics = _scored_counts(str(tmp_path / name), capsys.readouterr().out)
        assert metrics["eval_pairs"] == how
        scored.append([(r["left"], r["right"], r["same"]) for r in rows])
    assert scored[0] == scored[1]  # the same pairs, in the same order
    assert len(scored[0]) == (152 if how == "drawn" else 153)  # 12 a image: every pair, each once


def test_one_shot_trials_are_counted_as_scored(tmp_path):
    """Two classes of two images hold 8 distinct 2-way trials: 400 were scored and counted."""
    val = make_folder(str(tmp_path / "d"), classes=2, per_class=2)
    lines = []
    settings = EvaluationSettings(val_path=val, out_path=str(tmp_path / "out"), max_pictures=0, n_way=2, workers=0)
    result = run_evaluation(_Oracle(), settings, log=lines.append)
    assert result.one_shot["trials"] == 8 and json.load(open(tmp_path / "out" / "metrics.json"))["one_shot"]["trials"] == 8
    text = "\n".join(lines)
    assert "8 distinct 2-way one-shot trials, not the 400 of --trials" in text and "over 8 trials" in text


def test_eval_takes_channels_last_as_train_does(trained_checkpoint, tiny_dataset, tmp_path, monkeypatch):
    import siamese.predict

    used = []
    original = siamese.predict.TorchPredictor.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        used.append(self.memory_format)

    monkeypatch.setattr(siamese.predict.TorchPredictor, "__init__", spy)
    assert eval_script.main(["-v", tiny_dataset[1], "-c", trained_checkpoint, "-o", str(tmp_path / "eval"), "--device",
                             "cpu", "--max-pictures", "0", "--channels-last"]) == 0
    assert used == [torch.channels_last]  # not the CPU's default
