"""The training settings object: one place for the options' defaults and checks, args.json as
its record, and train.py --config re-running a recorded run."""

import dataclasses
import json
import os

import pytest
import torch

import crossval
import train
from conftest import TINY_TRAIN_ARGS
from siamese.errors import UserError
from siamese.settings import TrainingSettings


def test_the_command_line_defaults_are_the_settings_defaults():
    args = train.parse_args(["--train_path", "x", "-o", "y"])
    assert TrainingSettings.from_namespace(args) == TrainingSettings()
    args = crossval.get_args_parser().parse_args(["--data", "x", "-o", "y"])
    assert TrainingSettings.from_namespace(args) == TrainingSettings()
    assert not hasattr(args, "val_pairs_per_image")  # the folds train without validation


def test_settings_are_frozen_and_typed():
    settings = TrainingSettings(epochs=3, learning_rate=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.epochs = 4
    assert settings.learning_rate == 1.0 and isinstance(settings.learning_rate, float)
    with pytest.raises(UserError, match=r'--epochs must be int, not "3"'):
        TrainingSettings(epochs="3")
    with pytest.raises(UserError, match="--amp must be bool, not 1"):
        TrainingSettings(amp=1)
    with pytest.raises(UserError, match="--eval-batch-size must be int or none"):
        TrainingSettings(eval_batch_size=2.5)
    with pytest.raises(UserError, match="--lr-schedule must be one of constant, cosine, step, not 'linear'"):
        TrainingSettings(lr_schedule="linear")
    with pytest.raises(UserError, match="--rotations must be one of 1, 2, 4, not '3'"):
        TrainingSettings(rotations=3)
    with pytest.raises(TypeError):  # keyword-only: no positional mix-ups
        TrainingSettings("resnet18")


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
def test_config_reruns_a_recorded_run_exactly(tiny_dataset, tmp_path, capsys):
    train_dir, val_dir = tiny_dataset
    first, again, changed = (str(tmp_path / name) for name in ("first", "again", "changed"))
    assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", first, "-e", "1", "--seed", "5",
                       "--normalize-features", *TINY_TRAIN_ARGS]) == 0
    recorded = json.load(open(os.path.join(first, "args.json")))
    assert recorded["train_path"] == [train_dir] and recorded["val_path"] == val_dir
    assert TrainingSettings(**{k: recorded[k] for k in TrainingSettings().to_dict()}).seed == 5

    assert train.main(["--config", os.path.join(first, "args.json"), "-o", again]) == 0
    rerun = json.load(open(os.path.join(again, "args.json")))
    same = {k: v for k, v in rerun.items() if k not in ("out_path", "config", "run_id")}
    assert same == {k: v for k, v in recorded.items() if k not in ("out_path", "config", "run_id")}
    assert rerun["run_id"] != recorded["run_id"]
    a, b = _weights(os.path.join(first, "last.pth")), _weights(os.path.join(again, "last.pth"))
    assert all(torch.equal(a[name], b[name]) for name in a)  # the same run, bit for bit

    # flags on the command line override the file, a recorded switch included
    assert train.main(["--config", os.path.join(again, "args.json"), "-o", changed, "--seed", "6",
                       "--no-normalize-features"]) == 0
    overridden = json.load(open(os.path.join(changed, "args.json")))
    assert overridden["seed"] == 6 and overridden["normalize_features"] is False
    assert torch.load(os.path.join(changed, "last.pth"), weights_only=True)["config"]["normalize"] is False
    assert overridden["image_size"] == 32 and overridden["train_path"] == [train_dir]


@pytest.mark.parametrize("record, message", [
    ({"epochs": 1, "learnig_rate": 0.1, "sede": 3}, "unknown setting(s) learnig_rate, sede"),
    ({"epochs": "1"}, 'epochs must be a number (between 1 and 100000), not "1"'),
    ([1, 2], "does not hold a training run's settings"),
    (None, "is not a readable JSON file"),
    ("missing", "does not exist"),
    ({"epochs": 1}, "give --train-path"),
    ({"train_path": "x", "epochs": 0}, "args.json': epochs must be at least 1, not 0"),
    ({"train_path": "x", "workers": 1000}, "args.json': workers must be at most the"),  # the cores, as given
    ({"train_path": [""]}, "args.json': train_path must be a folder's path, not ''"),  # not the current folder
    ({"train_path": "x", "val_path": " "}, "args.json': val_path must be a folder's path, not ' '"),
])
def test_a_bad_config_is_one_line(tmp_path, capsys, record, message):
    path = tmp_path / "args.json"
    if record is None:
        path.write_text("{not json")
    elif record != "missing":
        path.write_text(json.dumps(record))
    assert train.main(["--config", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("argv", [["--train-path", ""], ["--train-path", "x", "--val-path", ""]])
def test_an_empty_folder_path_is_refused(tmp_path, capsys, argv):
    assert train.main([*argv, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "-path must be a folder's path, not ''" in err[0], err
    assert crossval.main(["--data", "", "-o", str(tmp_path / "out")]) == 2
    assert "--data must be a folder's path, not ''" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_a_settings_error_stops_before_anything_is_read_or_written(tmp_path):
    from siamese.training import fit

    with pytest.raises(UserError, match="--erase is a probability"):
        fit(TrainingSettings(erase=2.0), train=str(tmp_path / "missing"), out_path=str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
