"""The command line against a hostile user: every number is checked where it enters (NaN,
infinity, a negative seed, a value out of range: one line, exit 2, nothing written), one option
given under two spellings is refused, split.py says what it does with the classes, args.json
records absolute paths, and --threshold-at-far 0 means off in every script."""

import importlib
import json
import os

import pytest

import crossval
import eval as eval_script
import identify
import onnx_to_int8
import split
import torch_to_onnx
import train
from conftest import TINY_TRAIN_ARGS, make_folder
from siamese.errors import UserError
from siamese.options import HIDDEN_ALIASES, TEXT_TYPES
from siamese.settings import EvaluationSettings, TrainingSettings

SCRIPTS = ("train", "eval", "crossval", "split", "torch_to_onnx", "onnx_to_int8", "onnx_to_trt", "infer_tensorrt",
           "eval_tensorrt", "identify", "demo")
SEED_RULE = "must be at least 0, not -1"


def _shown(action):
    """An option as --help and the messages name it: no underscore spelling, no hidden alias."""
    return [s for s in action.option_strings if "_" not in s and s not in HIDDEN_ALIASES] or action.option_strings[:1]


def _error(capsys):
    """The one line a refused command printed (no usage, no traceback)."""
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "usage:" not in captured.err, captured.err
    return err[0]


def _number_options():
    """(script, option, action) for every option of every script that takes a number."""
    found = []
    for script in SCRIPTS:
        for action in importlib.import_module(script).get_args_parser()._actions:
            if action.option_strings and action.type not in TEXT_TYPES:
                found.append((script, _shown(action)[-1], action))
    return found


def test_no_script_takes_a_number_unchecked():
    numbers = _number_options()
    assert len(numbers) > 60  # every script's, the settings' included
    unchecked = [f"{script}.py {option}" for script, option, action in numbers if action.type in (int, float)]
    assert not unchecked, f"plain int/float options (NaN, infinity and any sign pass): {unchecked}"


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e999"])
def test_every_number_option_refuses_nan_infinity_and_negatives_in_one_line(value):
    for script, option, action in _number_options():
        parser = importlib.import_module(script).get_args_parser()
        with pytest.raises(UserError) as refused:
            parser.parse_args([option, value])
        message = str(refused.value)
        assert "\n" not in message and message.startswith(f"{'/'.join(_shown(action))} "), message
        assert value in message, message


@pytest.mark.parametrize("value", ["nan", "-0.1", "2"])
def test_int8_max_auc_drop_is_refused_before_any_work(tmp_path, capsys, value):
    out = tmp_path / "model.int8.onnx"
    assert onnx_to_int8.main(["--onnx", str(tmp_path / "model.onnx"), "--calibration", str(tmp_path), "-o", str(out),
                              "--max-auc-drop", value]) == 2
    line = _error(capsys)
    assert line.startswith("error: --max-auc-drop must be ") and line.endswith((f" {value}", f"'{value}'"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("script, argv", [
    ("crossval", ["--data", "d", "-o", "o", "--eval-seed", "-1"]),
    ("crossval", ["--data", "d", "-o", "o", "--fold-seed", "-1"]),
    ("crossval", ["--data", "d", "-o", "o", "--holdout-seed", "-1", "--holdout-classes", "2"]),
    ("split", ["d", "-o", "o", "--seed", "-1"]),
    ("onnx_to_int8", ["--onnx", "m.onnx", "--calibration", "d", "--seed", "-1"]),
    ("train", ["--train-path", "d", "-o", "o", "--seed", "-1"]),
    ("eval", ["-v", "d", "-o", "o", "-c", "m.pth", "--seed", "-1"]),
])
def test_one_seed_rule_for_every_script(tmp_path, monkeypatch, capsys, script, argv):
    monkeypatch.chdir(tmp_path)
    make_folder(str(tmp_path / "d"), classes=4, per_class=2)
    assert importlib.import_module(script).main(argv) == 2
    option = argv[argv.index("-1") - 1]
    assert _error(capsys) == f"error: {option} {SEED_RULE}"
    assert sorted(os.listdir(tmp_path)) == ["d"]


def test_one_option_under_two_spellings_is_refused(capsys):
    for argv, first, second in ((["--train_path", "a", "--train-path", "b", "-o", "o"], "--train_path", "--train-path"),
                                (["--train-path", "a", "-o", "o", "-lr", "0.5", "--learning-rate", "0.001"], "-lr",
                                 "--learning-rate"),
                                (["--train-path", "a", "--out_path", "o", "-o", "p"], "--out_path", "-o"),
                                (["--train-path", "a", "-o", "o", "--learning-r", "0.5", "-lr", "0.1"],
                                 "--learning-rate", "-lr")):  # an abbreviation is its option
        assert train.main(argv) == 2
        assert _error(capsys) == f"error: {first} and {second} set the same option; give only one of them"
    assert eval_script.main(["-v", "v", "--out-path", "a", "-o", "b", "-c", "m.pth"]) == 2
    assert "--out-path and -o set the same option" in _error(capsys)
    assert identify.main(["--gallery", "g", "--query", "q", "--engine", "a.onnx", "-m", "b.onnx"]) == 2
    assert "--engine and -m set the same option" in _error(capsys)


def test_an_abbreviation_is_its_option_and_names_only_visible_spellings(capsys):
    args = train.parse_args(["--train-path", "a", "-o", "o", "--learn", "0.5"])  # --learning-rate, --learning_rate: one
    assert args.learning_rate == 0.5
    assert train.main(["--train-path", "a", "-o", "o", "--val", "v"]) == 2
    line = _error(capsys)
    assert "ambiguous option: --val could match --val-path, --val-pairs-per-image" in line and "_" not in line, line


def test_the_same_spelling_again_adds_folders_or_is_the_last_value(tmp_path):
    args = train.parse_args(["--train-path", "a", "--train-path", "b", "c", "-o", "o", "--seed", "1", "--seed", "2"])
    assert args.train_path == [os.path.abspath(p) for p in ("a", "b", "c")] and args.seed == 2
    # an option and its opposite are two values, not two spellings: the last wins, as for --seed
    args = train.parse_args(["--train-path", "a", "-o", "o", "--no-augment", "--augment", "full", "--amp", "--no-amp"])
    assert args.augment == "full" and args.amp is False
    assert crossval.get_args_parser().parse_args(["--data", "a", "--data", "b", "-o", "o"]).data == ["a", "b"]
    record = tmp_path / "args.json"
    record.write_text(json.dumps({"train_path": ["recorded"], "epochs": 3}))
    args = train.parse_args(["--config", str(record), "-o", "o", "--train-path", "x", "--train-path", "y"])
    assert args.train_path == [os.path.abspath("x"), os.path.abspath("y")] and args.epochs == 3  # replaced, not added


@pytest.mark.parametrize("argv, message", [
    (["--val-classes", "nan"], "--val-classes must be a whole number of classes (e.g. 8) or a fraction below 1"),
    (["--test-classes", "inf"], "--test-classes must be a whole number of classes (e.g. 8) or a fraction below 1"),
    (["--val-classes", "2.5"], "--val-classes must be a whole number of classes (e.g. 8) or a fraction below 1 (e.g. "
                               "0.2), not 2.5"),
    (["--val-classes", "3", "--test-classes", "3"], "the train split would have 0 class(es) of 6;"),
])
def test_split_refusals_are_one_line_about_its_own_options(tmp_path, capsys, argv, message):
    data = make_folder(str(tmp_path / "photos"), classes=6, per_class=2)
    assert split.main([data, "-o", str(tmp_path / "out"), *argv]) == 2
    line = _error(capsys)
    assert message in line and "--holdout-classes" not in line
    assert not os.path.exists(tmp_path / "out")


def test_split_keeps_a_class_of_one_image_in_train_and_names_it(tmp_path, capsys):
    data = make_folder(str(tmp_path / "photos"), classes=6, per_class=3)
    for name in sorted(os.listdir(os.path.join(data, "class_2")))[1:]:
        os.remove(os.path.join(data, "class_2", name))
    for seed in range(12):  # the old draw put class_2 into val/ for some of these seeds
        out = str(tmp_path / f"split_{seed}")
        assert split.main([data, "-o", out, "--val-classes", "2", "--seed", str(seed)]) == 0
        assert "note: 1 class(es) with a single image ('class_2') stay in train/" in capsys.readouterr().out
        classes = json.load(open(os.path.join(out, "split.json")))["classes"]
        assert "class_2" in classes["train"] and len(classes["val"]) == 2
    # a fraction counts the classes that can be validated on: 0.4 of the 5 with two images
    assert split.main([data, "-o", str(tmp_path / "fraction"), "--val-classes", "0.4"]) == 0
    assert "val: 2 classes" in capsys.readouterr().out


def test_args_json_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pth").write_bytes(b"")
    args = train.parse_args(["--train-path", "data/train", "--val-path", "data/val", "-o", "runs/a", "--weights",
                             "w.pth", "--resume", "runs/a/last.pth"])
    assert args.train_path == [str(tmp_path / "data" / "train")] and args.val_path == str(tmp_path / "data" / "val")
    assert args.out_path == str(tmp_path / "runs" / "a") and args.resume == str(tmp_path / "runs" / "a" / "last.pth")
    assert args.weights == str(tmp_path / "w.pth")
    assert train.parse_args(["--train-path", "t", "-o", "o", "--weights", "none"]).weights == "none"


@pytest.mark.slow
def test_config_of_a_run_started_elsewhere_reruns_it(tiny_dataset, tmp_path, monkeypatch, capsys):
    train_dir, val_dir = tiny_dataset
    first = tmp_path / "first"
    first.mkdir()
    for name, source in (("train", train_dir), ("val", val_dir)):
        os.symlink(source, first / name)
    monkeypatch.chdir(first)
    assert train.main(["--train-path", "train", "--val-path", "val", "-o", "runs/a", "-e", "1", *TINY_TRAIN_ARGS]) == 0
    assert f"checkpoints in {first / 'runs' / 'a'}" in capsys.readouterr().out
    recorded = json.load(open(first / "runs" / "a" / "args.json"))
    assert recorded["train_path"] == [str(first / "train")] and recorded["out_path"] == str(first / "runs" / "a")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert train.main(["--config", "../first/runs/a/args.json", "-o", "b"]) == 0
    again = json.load(open(elsewhere / "b" / "args.json"))
    assert again["train_path"] == recorded["train_path"] and again["val_path"] == str(first / "val")
    assert again["config"] == str(first / "runs" / "a" / "args.json")


def test_threshold_at_far_zero_is_off_in_every_script(capsys):
    for far in ("0", "0.0"):
        args = eval_script.get_args_parser().parse_args(["-v", "v", "-o", "o", "-c", "m", "--threshold-at-far", far,
                                                         "--threshold", "0.6"])
        settings = EvaluationSettings.from_namespace(args)
        assert settings.threshold_at_far is None and settings.threshold == 0.6
        assert TrainingSettings.from_namespace(train.parse_args(["--train-path", "t", "-o", "o", "--threshold-at-far",
                                                                 far])).threshold_at_far == 0.0
        cv_args = crossval.get_args_parser().parse_args(["--data", "d", "-o", "o", "--threshold-at-far", far])
        assert cv_args.report_far == 0
    rule = "--threshold-at-far is a false accept rate from 0 (off) up to, not including, 1, not 1"
    assert eval_script.main(["-v", "v", "-o", "o", "-c", "m", "--threshold-at-far", "1"]) == 2
    assert _error(capsys) == f"error: {rule}"
    assert train.main(["--train-path", "t", "-o", "o", "--threshold-at-far", "1"]) == 2
    assert _error(capsys) == f"error: {rule}"
    assert crossval.main(["--data", "d", "-o", "o", "--threshold-at-far", "1"]) == 2
    assert _error(capsys) == f"error: {rule}"
    for script in ("train", "eval", "crossval"):
        helps = [a.help for a in importlib.import_module(script).get_args_parser()._actions
                 if "--threshold-at-far" in a.option_strings]
        assert helps and "0: off" in helps[0]


def test_a_recorded_setting_out_of_range_is_refused_naming_its_option(tmp_path, capsys):
    record = tmp_path / "args.json"
    record.write_text(json.dumps({"train_path": ["x"], "seed": -1}))
    assert train.main(["--config", str(record), "-o", str(tmp_path / "out")]) == 2
    assert _error(capsys) == f"error: --config '{record}': seed {SEED_RULE}"
    with pytest.raises(UserError, match="--trials must be at least 1, not 0"):
        EvaluationSettings(val_path="v", out_path="o", trials=0)


def test_opset_outside_the_exporters_range_is_refused_before_loading(tmp_path, capsys):
    for opset in ("99", "17", "0", "-3", "20.5"):
        assert torch_to_onnx.main(["-c", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "m.onnx"), "--opset",
                                   opset]) == 2
        assert _error(capsys).startswith("error: --opset must be ")
    assert os.listdir(tmp_path) == []


def test_argparse_complaints_are_one_line_and_exit_2(capsys):
    assert train.main(["--train-path", "a", "-o", "o", "--no-such-option"]) == 2
    assert _error(capsys) == "error: unrecognized arguments: --no-such-option"
    assert train.main(["--train-path", "a"]) == 2
    assert _error(capsys) == "error: the following arguments are required: -o/--out"
    assert identify.main(["--gallery", "g", "--query", "q", "-m", "m.onnx", "--shortlist", "\u00b2"]) == 2
    assert _error(capsys) == "error: --shortlist must be 'auto' or a whole number between 0 and 1000000, not '\u00b2'"


@pytest.mark.parametrize("argv, option", [
    (["split.py", "--seed", "\u0663"], "--seed"),  # an Arabic-Indic three
    (["split.py", "--seed", "1_0"], "--seed"),
    (["split.py", "--val-classes", "\uff13"], "--val-classes"),  # a full-width three
    (["eval.py", "--threshold-at-far", "1e-400"], "--threshold-at-far"),  # not 0, but rounds to it: not off
])
def test_numbers_are_ascii_digits_and_never_round_to_off(argv, option, tmp_path, capsys):
    """int() and float() read other scripts' digits and '1_0', and 1e-400 reads as 0 (off):
    each is refused as written, before anything runs."""
    import importlib

    script = importlib.import_module(argv[0][:-3])
    parser = script.get_args_parser()
    with pytest.raises(UserError) as refused:
        parser.parse_args(argv[1:])
    assert str(refused.value).startswith(option)
