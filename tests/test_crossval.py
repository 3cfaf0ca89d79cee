import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import crossval
import train
from conftest import TINY_TRAIN_ARGS, make_folder
from siamese.baselines import LocalBinaryPatterns, PixelCosine
from siamese.evaluate import baseline_metrics
from siamese.errors import UserError
from siamese.folds import class_folds, class_groups
from siamese.images import merge_folders, scan_folder
from siamese.pairs import all_pairs, one_shot_trials
from siamese.scoring import score_pairs


def test_folds_are_disjoint_cover_every_class_and_follow_the_seed():
    classes = [f"s{i}" for i in range(30)]
    folds = class_folds(classes, classes, folds=5, seed=0)
    assert sorted(sum(folds, [])) == sorted(classes)  # covering, and disjoint (no class twice)
    assert [len(f) for f in folds] == [6] * 5
    assert class_folds(classes, classes, folds=5, seed=0) == folds
    assert class_folds(classes, classes, folds=5, seed=1) != folds


def test_folds_hold_out_whole_groups():
    classes = [f"{alphabet}_character{i:02d}" for alphabet, n in (("A", 10), ("B", 8), ("C", 7), ("D", 5), ("E", 4))
               for i in range(n)]
    groups = class_groups(classes, regex=r"(.+)_character\d+$")
    assert groups[:10] == ["A"] * 10
    folds = class_folds(classes, groups, folds=2, seed=3)
    assert sorted(sum(folds, [])) == sorted(classes)
    for fold in folds:
        fold_groups = {name.split("_")[0] for name in fold}
        for group in fold_groups:  # every class of a held-out group is in that fold
            assert all(name in fold for name in classes if name.startswith(group + "_"))
    assert abs(len(folds[0]) - len(folds[1])) <= 4  # balanced by classes as far as whole groups allow


def test_groups_from_a_csv_and_the_errors(tmp_path):
    table = tmp_path / "groups.csv"
    table.write_text("class,group\na,x\nb,x\nc,y\n")
    assert class_groups(["a", "b", "c"], csv_path=str(table)) == ["x", "x", "y"]
    with pytest.raises(UserError, match="no group for 1 class"):
        class_groups(["a", "b", "d"], csv_path=str(table))
    with pytest.raises(UserError, match="does not match class 'b'"):
        class_groups(["a_1", "b"], regex=r"(.+)_\d")
    with pytest.raises(UserError, match="not a regular expression"):
        class_groups(["a"], regex="(")
    with pytest.raises(UserError, match="at least 5 groups"):
        class_folds(["a", "b", "c"], ["x", "x", "y"], folds=5, seed=0)


def _save(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8), "L").save(path)
    return str(path)


def test_pixel_cosine_on_hand_made_images(tmp_path):
    gradient = np.tile(np.arange(0, 240, 5), (48, 1))  # 48 x 48, each row 0..235
    a = _save(tmp_path / "a.png", gradient)
    brighter = _save(tmp_path / "b.png", gradient + 10)  # the mean is removed: same pattern, cosine 1
    inverted = _save(tmp_path / "c.png", 235 - gradient)  # the pattern reversed: cosine -1
    scores = score_pairs(PixelCosine(size=48), [(a, brighter), (a, inverted), (a, a)])
    np.testing.assert_allclose(scores, [1.0, -1.0, 1.0], atol=1e-9)


def test_lbp_similarity_is_minus_the_chi_square_distance(tmp_path):
    rng = np.random.default_rng(0)
    noise = _save(tmp_path / "noise.png", rng.integers(0, 256, (96, 96)))
    flat = _save(tmp_path / "flat.png", np.full((96, 96), 128))
    lbp = LocalBinaryPatterns()
    same, different = score_pairs(lbp, [(noise, noise), (noise, flat)])
    assert same == 0.0
    # a flat image has one code everywhere: against noise, whose codes are spread, the chi-square
    # distance is near its maximum of 2 per histogram pair (sum over cells of normalised histograms)
    a, b = lbp.features(noise), lbp.features(flat)
    expected = np.sum(np.where(a + b > 0, (a - b) ** 2 / np.where(a + b > 0, a + b, 1), 0))
    assert different == pytest.approx(-expected) and different < -1.0


def test_baselines_tell_classes_apart_when_pixels_do(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(3):  # each class: a fixed pattern of its own, each image with its own noise
        pattern = rng.integers(40, 216, (48, 48))
        os.makedirs(tmp_path / f"c{c}")
        for i in range(4):
            _save(tmp_path / f"c{c}" / f"{i}.png", pattern + rng.integers(-30, 31, (48, 48)))
    results = baseline_metrics(all_pairs(scan_folder(str(tmp_path))))
    assert set(results) == {"pixels", "lbp"}
    assert results["pixels"]["auc"] == 1.0 and results["pixels"]["eer"] == 0.0
    assert results["lbp"]["auc"] > 0.9
    assert "loss" not in results["pixels"]  # not probabilities: ranking metrics only


def test_all_pairs_is_every_unordered_pair(tiny_folder):
    folder = scan_folder(tiny_folder)  # 3 classes x 6 images
    pairs = all_pairs(folder)
    assert len(pairs) == 18 * 17 // 2 and len({(p.left, p.right) for p in pairs}) == len(pairs)
    assert sum(p.same for p in pairs) == 3 * (6 * 5 // 2)


def test_one_shot_trials_within_a_group_draw_every_class_from_one_group(tmp_path):
    for a, alphabet in enumerate(("Greek", "Latin", "Runic")):
        for c in range(4):  # a seed of its own: one image in two classes would be refused
            make_folder(str(tmp_path / "tmp"), classes=1, per_class=3, seed=4 * a + c)
            os.rename(tmp_path / "tmp" / "class_0", tmp_path / f"{alphabet}_character{c:02d}")
    folder = scan_folder(str(tmp_path))
    groups = class_groups(folder.classes, regex=r"(.+)_character\d+$")
    trials = one_shot_trials(folder, n_way=4, trials=50, seed=0, groups=groups)
    seen = set()
    for trial in trials:
        alphabets = {os.path.basename(os.path.dirname(p)).split("_")[0] for p in trial.candidates}
        assert len(alphabets) == 1
        seen |= alphabets
        assert os.path.dirname(trial.candidates[trial.answer]) == os.path.dirname(trial.query)
        assert trial.candidates[trial.answer] != trial.query
    assert seen == {"Greek", "Latin", "Runic"}
    # across groups, a 4-way trial mixes alphabets
    mixed = one_shot_trials(folder, n_way=4, trials=50, seed=0)
    assert any(len({os.path.basename(os.path.dirname(p)).split("_")[0] for p in t.candidates}) > 1 for t in mixed)
    with pytest.raises(UserError, match="group of at least 5 classes"):
        one_shot_trials(folder, n_way=5, trials=5, seed=0, groups=groups)


def test_merged_folders_refuse_a_class_in_both(tmp_path):
    a = scan_folder(make_folder(str(tmp_path / "a"), classes=2))
    with pytest.raises(UserError, match="class 'class_0' is in both"):
        merge_folders([a, scan_folder(make_folder(str(tmp_path / "b"), classes=2, seed=1))])  # other images
    os.rename(tmp_path / "b" / "class_0", tmp_path / "b" / "other")
    os.rename(tmp_path / "b" / "class_1", tmp_path / "b" / "another")
    merged = merge_folders([a, scan_folder(str(tmp_path / "b"))])
    assert merged.classes == ["another", "class_0", "class_1", "other"]
    assert all(merged.classes[label] in path for path, label in zip(merged.paths, merged.labels))


@pytest.mark.slow
def test_training_without_a_validation_folder_keeps_the_final_model(tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "final")
    assert train.main(["--train_path", tiny_dataset[0], "-o", out, "-e", "2", *TINY_TRAIN_ARGS]) == 0
    assert "last.pth is the final model" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(out, "best.pth"))
    last = torch.load(os.path.join(out, "last.pth"), weights_only=True)
    assert last["epoch"] == 2 and last["threshold"] is None


def _cv(data, out, *extra):
    return crossval.main(["--data", data, "-o", out, "--folds", "3", "-e", "1", *TINY_TRAIN_ARGS, *extra])


@pytest.mark.slow
def test_cross_validation_end_to_end_and_resumed(tmp_path, capsys):
    data = make_folder(str(tmp_path / "data"), classes=6, per_class=5)
    out = str(tmp_path / "cv")
    assert _cv(data, out, "--fold", "2") == 0
    assert os.path.exists(os.path.join(out, "fold_2", "result.json"))
    assert not os.path.exists(os.path.join(out, "fold_1"))
    assert "2 of 3 folds" not in capsys.readouterr().out
    assert _cv(data, out) == 0  # the other two folds; fold 2 is not trained again
    printed = capsys.readouterr().out
    assert "fold 2: already scored" in printed and "3 of 3 folds" in printed
    report = json.load(open(os.path.join(out, "crossval.json")))
    held_out = [fold["held_out"] for fold in report["per_fold"]]
    assert sorted(sum(held_out, [])) == [f"class_{c}" for c in range(6)]
    for fold in report["per_fold"]:
        assert fold["pairs"] == 10 * 9 // 2 and fold["positive_pairs"] == 2 * 10  # every pair of 2 classes x 5
        assert set(fold["baselines"]) == {"pixels", "lbp"}
    auc = report["summary"]["model"]["auc"]
    assert auc["folds"] == [fold["model"]["auc"] for fold in report["per_fold"]]
    assert auc["mean"] == pytest.approx(np.mean(auc["folds"])) and auc["std"] == pytest.approx(np.std(auc["folds"], ddof=1))
    lines = open(os.path.join(out, "crossval.csv")).read().splitlines()
    assert lines[0] == "system,metric,mean,std,fold_1,fold_2,fold_3"
    assert any(line.startswith("pixels,auc,") for line in lines)
    # other folds or settings into the same out path are refused, not mixed
    assert _cv(data, out, "--fold-seed", "5") == 2
    assert "other folds" in capsys.readouterr().err
    assert _cv(data, out, "--dropout", "0.2") == 2
    assert "other --dropout;" in capsys.readouterr().err


def test_a_cross_validation_in_progress_keeps_a_second_one_out(tmp_path, capsys):
    from siamese.files import claim_folder

    data = make_folder(str(tmp_path / "data"), classes=6, per_class=5)
    out = str(tmp_path / "cv")
    with claim_folder(out, what="cross-validation out path"):
        assert _cv(data, out, "--fold", "1") == 2
    assert "in use by another command" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "fold_1")) and not os.path.exists(os.path.join(out, "plan.json"))


def test_a_plan_from_before_a_new_setting_continues_at_its_default(tmp_path):
    from siamese.crossval import check_plan
    from siamese.errors import UserError
    from siamese.settings import TrainingSettings

    training = {k: v for k, v in TrainingSettings().to_dict().items() if k != "workers"}
    plan = {"folds": [["a"], ["b"]], "training": training}
    older = dict(plan, training={k: v for k, v in training.items() if k != "flip_average"})
    (tmp_path / "plan.json").write_text(json.dumps(older))
    check_plan(str(tmp_path), plan)  # the new setting at its default: the same plan
    with pytest.raises(UserError, match="other --flip-average;"):
        check_plan(str(tmp_path), dict(plan, training=dict(training, flip_average=True)))


@pytest.mark.slow
def test_trained_folds_are_rescored_with_other_scoring_settings_without_training(tmp_path, capsys):
    data = make_folder(str(tmp_path / "data"), classes=6, per_class=5)
    trained, flipped = str(tmp_path / "cv"), str(tmp_path / "cv_flip")
    assert _cv(data, flipped, "--trained-folds", trained, "--flip-average") == 2  # nothing there yet
    assert "holds no cross-validation" in capsys.readouterr().err and not os.path.exists(flipped)
    assert _cv(data, trained, "--fold", "1") == 0
    capsys.readouterr()
    assert _cv(data, flipped, "--trained-folds", trained, "--flip-average") == 2  # folds 2 and 3 are not trained
    assert "fold 2 of --trained-folds" in capsys.readouterr().err
    assert _cv(data, trained) == 0
    capsys.readouterr()
    before = {name: os.path.getmtime(os.path.join(trained, name)) for name in ("crossval.json", "fold_1/last.pth")}
    assert _cv(data, flipped, "--trained-folds", trained, "--flip-average") == 0  # fold 1 scored before, 2 and 3 now
    assert "training on" not in capsys.readouterr().out  # nothing trained again
    assert before == {name: os.path.getmtime(os.path.join(trained, name)) for name in before}  # the earlier run kept
    assert not any(name.endswith(".pth") for _, _, files in os.walk(flipped) for name in files)
    plain, rescored = (json.load(open(os.path.join(out, "crossval.json"))) for out in (trained, flipped))
    for fold_plain, fold_rescored in zip(plain["per_fold"], rescored["per_fold"]):
        assert fold_rescored["trained_in"] == os.path.abspath(os.path.join(trained, f"fold_{fold_plain['fold']}",
                                                                           "last.pth"))
        assert fold_rescored["baselines"] == fold_plain["baselines"]  # the same pairs
    assert [f["model"]["auc"] for f in plain["per_fold"]] != [f["model"]["auc"] for f in rescored["per_fold"]]
    # anything but the scoring settings must match the trained folds', and the folds' own figures stay theirs
    assert _cv(data, str(tmp_path / "cv_other"), "--trained-folds", trained, "--dropout", "0.2") == 2
    assert "other --dropout; only --flip-average and --shift-average may differ" in capsys.readouterr().err
    assert _cv(data, trained, "--trained-folds", trained, "--flip-average") == 2
    assert "give another -o/--out" in capsys.readouterr().err


def test_the_outer_holdout_is_seeded_whole_groups_and_in_no_fold_of_any_repeat():
    from siamese.folds import holdout_classes, repeated_folds

    classes = [f"{alphabet}_character{i:02d}" for alphabet, n in (("A", 6), ("B", 5), ("C", 5), ("D", 4), ("E", 4),
                                                                  ("F", 3)) for i in range(n)]
    groups = class_groups(classes, regex=r"(.+)_character\d+$")
    holdout = holdout_classes(classes, groups, count=5, seed=0)
    assert len(holdout) >= 5 and holdout == holdout_classes(classes, groups, count=5, seed=0)
    held_groups = {name.split("_")[0] for name in holdout}
    assert holdout == sorted(c for c in classes if c.split("_")[0] in held_groups)  # whole groups
    assert any(holdout_classes(classes, groups, count=5, seed=s) != holdout for s in range(1, 4))
    inner = [(c, g) for c, g in zip(classes, groups) if c not in holdout]
    repeats = repeated_folds([c for c, _ in inner], [g for _, g in inner], folds=2, seed=4, repeats=3)
    assert repeats[0] == class_folds([c for c, _ in inner], [g for _, g in inner], folds=2, seed=4)
    assert len({json.dumps(r) for r in repeats}) > 1  # repeats draw other folds
    for folds in repeats:  # every repeat covers the inner classes and never touches the holdout
        assert sorted(sum(folds, [])) == sorted(c for c, _ in inner)
    with pytest.raises(UserError, match="leaves no classes to train on"):
        holdout_classes(classes, groups, count=len(classes), seed=0)
    with pytest.raises(UserError, match="--repeats must be at least 1"):
        repeated_folds(classes, groups, folds=2, seed=0, repeats=0)


@pytest.mark.slow
def test_nested_cross_validation_repeats_and_the_outer_figure(tmp_path, capsys):
    data = make_folder(str(tmp_path / "data"), classes=6, per_class=4)
    out = str(tmp_path / "cv")
    nested = ["--holdout-classes", "2", "--repeats", "2"]
    assert crossval.main(["--data", data, "-o", out, "--folds", "2", "-e", "1", *TINY_TRAIN_ARGS, *nested]) == 0
    printed = capsys.readouterr().out
    assert "2 kept out of every fold (outer)" in printed and "4 of 4 folds (2 repeats of 2 folds)" in printed
    assert "inner folds: settings chosen by these figures are flattered by them" in printed
    assert "outer held-out classes (2): not scored yet" in printed and "model, between repeats" in printed
    assert "repeat 2 fold 1: scoring 8 held-out images" in printed  # a line per fold while it scores
    plan = json.load(open(os.path.join(out, "plan.json")))
    report = json.load(open(os.path.join(out, "crossval.json")))
    assert len(plan["holdout"]) == 2 and report["outer"] is None
    assert sorted((r["repeat"], r["fold"]) for r in report["per_fold"]) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert os.path.exists(os.path.join(out, "repeat_2", "fold_1", "result.json"))
    for fold in report["per_fold"]:  # no inner fold trains on or scores an outer class
        assert fold["train_classes"] == 2 and not set(fold["held_out"]) & set(plan["holdout"])
    auc = report["summary"]["model"]["auc"]
    means = [np.mean([r["model"]["auc"] for r in report["per_fold"] if r["repeat"] == k]) for k in (1, 2)]
    assert auc["repeat_means"] == pytest.approx(means) and auc["repeat_std"] == pytest.approx(np.std(means, ddof=1))
    header = open(os.path.join(out, "crossval.csv")).readline().strip()
    assert header == "system,metric,mean,std,fold_1,fold_2,repeat_2_fold_1,repeat_2_fold_2"
    # --outer: trained on all four inner classes, scored on the two outer ones, labelled as the unbiased figure
    assert crossval.main(["--data", data, "-o", out, "--folds", "2", "-e", "1", *TINY_TRAIN_ARGS, *nested,
                          "--outer"]) == 0
    printed = capsys.readouterr().out
    assert "outer: training on 4 classes, holding out 2" in printed
    assert "outer held-out classes (2, trained on by no run and seen by no choice; 28 pairs): the unbiased" in printed
    assert "thresholds over the folds' held-out pairs (mean ± std): at the EER" in printed
    outer = json.load(open(os.path.join(out, "crossval.json")))["outer"]
    assert set(outer["thresholds"]) == {"eer", "far_0.01", "far_0.001"}
    assert outer["held_out"] == plan["holdout"] and outer["train_classes"] == 4 and outer["outer"] is True
    assert set(outer["baselines"]) == {"pixels", "lbp"}
    assert outer["auc_intervals"] is None and "95% intervals" not in printed  # 2 classes: too few to resample
    assert torch.load(os.path.join(out, "outer", "last.pth"), weights_only=True)["epoch"] == 1
    # --outer needs a holdout; --fold with --outer is refused
    assert crossval.main(["--data", data, "-o", str(tmp_path / "x"), "--folds", "2", "--outer", *TINY_TRAIN_ARGS]) == 2
    assert "give --holdout-classes too" in capsys.readouterr().err
    assert crossval.main(["--data", data, "-o", out, "--folds", "2", *nested, "--outer", "--fold", "1"]) == 2
    assert "leave out --fold and --repeat" in capsys.readouterr().err


@pytest.mark.slow
def test_against_compares_settings_fold_by_fold_and_names_the_spread(tmp_path, capsys):
    data = make_folder(str(tmp_path / "data"), classes=6, per_class=4)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    base = ["--data", data, "--folds", "2", "-e", "1", "--holdout-classes", "2", *TINY_TRAIN_ARGS]
    assert crossval.main([*base, "-o", a, "--against", b]) == 2  # nothing there yet
    assert "holds no scored cross-validation" in capsys.readouterr().err
    assert crossval.main([*base, "-o", a]) == 0
    assert crossval.main([*base, "-o", b, "--dropout", "0.2", "--against", a]) == 0
    printed = capsys.readouterr().out
    assert f"against '{a}' on the 2 inner folds scored in both" in printed
    assert "ROC-AUC:" in printed and "of 2 folds; run both with --repeats 2 or more" in printed
    assert crossval.main([*base, "-o", str(tmp_path / "c"), "--fold-seed", "3", "--against", a]) == 2
    assert "has other folds; only the training options may differ" in capsys.readouterr().err
    a2, b2 = str(tmp_path / "a2"), str(tmp_path / "b2")
    assert crossval.main([*base, "--repeats", "2", "-o", a2]) == 0
    assert crossval.main([*base, "--repeats", "2", "-o", b2, "--dropout", "0.2", "--against", a2]) == 0
    assert "the spread between fold choices (" in capsys.readouterr().out


def test_the_outer_report_gives_the_bootstrap_intervals():
    from siamese.crossval import outer_lines

    metrics = {"auc": 0.979, "eer": 0.082}
    outer = {"held_out": ["a", "b", "c"], "pairs": 435, "model": metrics, "baselines": {"pixels": metrics},
             "auc_intervals": {"model": [0.962, 0.991], "pixels": [0.93, 0.98], "model - pixels": [0.002, 0.036]}}
    line = outer_lines(outer)[-1]
    assert line.startswith("95% intervals over the outer classes (bootstrap): ROC-AUC 0.962 to 0.991")
    assert "over raw pixels (cosine) +0.002 to +0.036" in line


@pytest.mark.slow
def test_more_repeats_continue_a_cross_validation_and_fewer_are_refused(tmp_path, capsys):
    data = make_folder(str(tmp_path / "data"), classes=4, per_class=4)
    out = str(tmp_path / "cv")
    args = ["--data", data, "-o", out, "--folds", "2", "-e", "1", *TINY_TRAIN_ARGS]
    assert crossval.main([*args, "--repeats", "1"]) == 0
    first = open(os.path.join(out, "fold_1", "result.json")).read()
    capsys.readouterr()
    assert crossval.main([*args, "--repeats", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"'{out}' holds 1 repeat(s) of these folds: adding repeat 2" in printed
    assert "fold 1: already scored" in printed and "repeat 2 fold 2: training on" in printed
    assert open(os.path.join(out, "fold_1", "result.json")).read() == first  # the first repeat kept as it was
    assert json.load(open(os.path.join(out, "plan.json")))["repeats"] == 2
    assert "4 of 4 folds (2 repeats of 2 folds)" in printed
    assert crossval.main([*args, "--repeats", "1"]) == 2
    assert "holds a cross-validation with other repeats" in capsys.readouterr().err


@pytest.mark.slow
def test_a_copy_of_one_image_in_other_classes_is_refused_before_any_fold(tmp_path, capsys):
    """One image copied into every other class: whichever classes a fold held out, two of its
    held-out images would have the content of a training image. The data is refused at once (one
    image cannot be of two classes), before a fold is trained."""
    import shutil

    data = make_folder(str(tmp_path / "data"), classes=6, per_class=5)
    for c in range(1, 6):
        shutil.copyfile(os.path.join(data, "class_0", "img_00.png"), os.path.join(data, f"class_{c}", "copy.png"))
    out = str(tmp_path / "cv")
    assert _cv(data, out, "--fold", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "5 image(s) have the content (the same bytes) of an image of another class" in err[0]
    assert not os.path.exists(os.path.join(out, "fold_1"))


def _fold_cv(data, out, **training):
    """A CrossValidation of `data` (3 folds) into `out`, as crossval.py builds it, and its images' keys."""
    from siamese.crossval import CrossValidation, FoldScoring, make_plan
    from siamese.lineage import content_keys
    from siamese.settings import TrainingSettings

    folder = scan_folder(data)
    folds = [class_folds(folder.classes, folder.classes, folds=3, seed=0)]
    settings, scoring = TrainingSettings(**training), FoldScoring()
    cv = CrossValidation(folder, {c: c for c in folder.classes}, folds, out, settings, scoring,
                         plan=make_plan([data], folds, [], settings, scoring))
    return cv, dict(zip(folder.paths, content_keys(folder.paths)))


def test_a_fold_result_is_reused_only_for_the_settings_classes_and_images_it_was_made_from(tmp_path):
    """result.json records the fold's identity and its checkpoint's SHA-256; a fold folder of other
    settings, classes or images, with a changed checkpoint, or from before the record, is refused."""
    from siamese.crossval import fold_identity, scored_result
    from siamese.lineage import sha256_of

    data, out = make_folder(str(tmp_path / "data"), classes=6, per_class=3), str(tmp_path / "cv")
    cv, keys = _fold_cv(data, out)
    held_out = cv.repeat_folds[0][0]
    identity = fold_identity(cv, cv.folder, held_out, keys)
    assert identity["train_classes"] == sorted(set(cv.folder.classes) - set(held_out))
    fold_dir = tmp_path / "cv" / "fold_1"
    fold_dir.mkdir(parents=True)
    (fold_dir / "last.pth").write_bytes(b"the scored model")
    result = {"fold": 1, "fold_identity": identity, "checkpoint_sha256": sha256_of(str(fold_dir / "last.pth"))}
    (fold_dir / "result.json").write_text(json.dumps(result))
    assert scored_result(cv, "fold_1", identity) == result
    assert scored_result(cv, "fold_2", fold_identity(cv, cv.folder, cv.repeat_folds[0][1], keys)) is None
    other, _ = _fold_cv(data, out, dropout=0.3, seed=5)
    with pytest.raises(UserError, match=r"fold_1' holds a result.json made with other settings than .*remove "):
        scored_result(cv, "fold_1", fold_identity(other, cv.folder, held_out, keys))
    with pytest.raises(UserError, match="made with other classes than"):
        scored_result(cv, "fold_1", fold_identity(cv, cv.folder, cv.repeat_folds[0][1], keys))
    changed = dict(keys, **{cv.folder.paths[0]: b"\0" * 8})  # one image's content other than it was
    with pytest.raises(UserError, match="made with other images than"):
        scored_result(cv, "fold_1", fold_identity(cv, cv.folder, held_out, changed))
    (fold_dir / "last.pth").write_bytes(b"another model")
    with pytest.raises(UserError, match="last.pth' has changed since .*result.json' scored it"):
        scored_result(cv, "fold_1", identity)
    del result["fold_identity"]
    (fold_dir / "result.json").write_text(json.dumps(result))
    with pytest.raises(UserError, match="from before folds recorded what they were made from; remove"):
        scored_result(cv, "fold_1", identity)


@pytest.mark.slow
def test_a_fold_copied_from_a_run_of_other_options_or_data_is_refused(tmp_path, capsys):
    """Folds run apart with --fold K and copied together: one made with other options or on other
    data is refused, naming its folder and what differs, and nothing is averaged; removed, it is
    trained again."""
    import shutil

    data = make_folder(str(tmp_path / "data"), classes=6, per_class=5)
    other_data = make_folder(str(tmp_path / "other"), classes=6, per_class=5, seed=3)
    os.rename(os.path.join(other_data, "class_5"), os.path.join(other_data, "class_9"))
    out, fold_1 = str(tmp_path / "cv"), os.path.join(str(tmp_path / "cv"), "fold_1")
    assert _cv(data, out, "--fold", "2") == 0
    for name, args in (("cv_options", [data, "--dropout", "0.3", "--seed", "5"]), ("cv_other", [other_data])):
        assert _cv(args[0], str(tmp_path / name), "--fold", "1", *args[1:]) == 0
    capsys.readouterr()
    shutil.copytree(str(tmp_path / "cv_options" / "fold_1"), fold_1)
    assert _cv(data, out) == 2
    err = capsys.readouterr().err
    assert f"'{fold_1}' holds a result.json made with other settings than this cross-validation" in err
    assert json.load(open(os.path.join(out, "crossval.json")))["folds_done"] == 1  # fold 2's summary, as it was
    os.remove(os.path.join(fold_1, "result.json"))  # its model alone: not continued either
    assert _cv(data, out, "--fold", "1") == 2
    assert f"'{fold_1}' holds a checkpoint (last.pth) made with other settings than" in capsys.readouterr().err
    shutil.rmtree(fold_1)
    shutil.copytree(str(tmp_path / "cv_other" / "fold_1"), fold_1)
    assert _cv(data, out, "--fold", "2") == 2  # the summary reads every fold's result
    assert "made with other classes and images than" in capsys.readouterr().err
    shutil.rmtree(fold_1)
    assert _cv(data, out) == 0
    assert "3 of 3 folds" in capsys.readouterr().out
    shutil.copyfile(os.path.join(out, "fold_2", "last.pth"), os.path.join(fold_1, "last.pth"))
    assert _cv(data, out) == 2
    assert "last.pth' has changed since" in capsys.readouterr().err
