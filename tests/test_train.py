import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from conftest import ROOT, TINY_TRAIN_ARGS, make_folder
from siamese.device import cpu_has_bfloat16
from siamese.images import scan_folder
from siamese.pairs import evaluation_pairs


def run_train(train_dir, val_dir, out, *extra):
    return train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", out, *TINY_TRAIN_ARGS, *extra])


def test_train_end_to_end_writes_everything(tiny_dataset, trained_checkpoint):
    out = os.path.dirname(trained_checkpoint)
    names = set(os.listdir(out))
    assert {"best.pth", "last.pth", "args.json", "metrics.csv", "tensorboard"} <= names
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0.0 <= float(r["val_auc"]) <= 1.0 for r in rows)
    assert json.load(open(os.path.join(out, "args.json")))["seed"] == 3
    events = os.listdir(os.path.join(out, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events)
    checkpoint = torch.load(os.path.join(out, "last.pth"), weights_only=True)
    assert checkpoint["epoch"] == 2 and 0.0 < checkpoint["threshold"] < 1.0
    assert checkpoint["config"]["image_size"] == 32


@pytest.mark.slow
def test_training_learns_the_demo_digits(tmp_path):
    from siamese.demo import build_digits_dataset

    train_dir, val_dir, _ = build_digits_dataset(str(tmp_path / "digits"))
    assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", str(tmp_path / "out"), "-e", "2",
                       *TINY_TRAIN_ARGS, "--batch-size", "32"]) == 0
    best = torch.load(str(tmp_path / "out" / "best.pth"), weights_only=True)["metrics"]["best"]
    assert best["auc"] > 0.85  # chance is 0.5; two epochs on the digits reach about 0.94


@pytest.mark.slow
def test_in_batch_pairing_learns_the_demo_digits(tmp_path):
    from siamese.demo import build_digits_dataset

    train_dir, val_dir, _ = build_digits_dataset(str(tmp_path / "digits"))
    assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", str(tmp_path / "out"), "-e", "2",
                       *TINY_TRAIN_ARGS, "--batch-size", "32", "--pairing", "in-batch", "--images-per-class", "4"]) == 0
    checkpoint = torch.load(str(tmp_path / "out" / "best.pth"), weights_only=True)
    assert checkpoint["metrics"]["best"]["auc"] > 0.85
    # every pair of each 32-image batch was scored: 496 per batch
    assert checkpoint["metrics"]["train"]["pairs"] % 496 == 0 and checkpoint["metrics"]["train"]["pairs"] > 0


@pytest.mark.slow
def test_class_loss_trains_a_classifier_beside_the_pairs(tmp_path):
    from siamese.demo import build_digits_dataset

    train_dir, val_dir, _ = build_digits_dataset(str(tmp_path / "digits"))
    assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", str(tmp_path / "out"), "-e", "2",
                       *TINY_TRAIN_ARGS, "--batch-size", "32", "--pairing", "in-batch", "--class-loss", "1"]) == 0
    last = torch.load(str(tmp_path / "out" / "last.pth"), weights_only=True)
    assert last["metrics"]["best"]["auc"] > 0.85
    assert last["classifier"]["weight"].shape == (10, 512)  # kept to resume, one row per digit
    assert not any(name.startswith("classifier") for name in last["model"])  # not part of the model
    with open(tmp_path / "out" / "metrics.csv") as f:
        class_losses = [float(r["train_class_loss"]) for r in csv.DictReader(f)]
    # the 10-way cross-entropy starts near log(10) = 2.3 and falls as the features separate the digits
    assert len(class_losses) == 2 and class_losses[1] < class_losses[0] < 2.6


@pytest.mark.slow
def test_class_scale_trains_a_cosine_classifier_with_a_margin(tmp_path):
    from siamese.demo import build_digits_dataset

    train_dir, val_dir, _ = build_digits_dataset(str(tmp_path / "digits"))
    assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", str(tmp_path / "out"), "-e", "2",
                       *TINY_TRAIN_ARGS, "--batch-size", "32", "--pairing", "in-batch", "--class-loss", "1",
                       "--class-scale", "16", "--class-margin", "0.1"]) == 0
    last = torch.load(str(tmp_path / "out" / "last.pth"), weights_only=True)
    assert last["metrics"]["best"]["auc"] > 0.85
    assert set(last["classifier"]) == {"weight"}  # cosine: class directions, no bias
    with open(tmp_path / "out" / "metrics.csv") as f:
        class_losses = [float(r["train_class_loss"]) for r in csv.DictReader(f)]
    assert len(class_losses) == 2 and class_losses[1] < class_losses[0]
    # resuming it with a linear classifier would mix two kinds of classifier: refused, nothing written
    before = sorted(os.listdir(tmp_path / "out"))
    assert train.main(["--train_path", train_dir, "-o", str(tmp_path / "out"), "-e", "3", *TINY_TRAIN_ARGS,
                       "--batch-size", "32", "--pairing", "in-batch", "--class-loss", "1",
                       "--resume", str(tmp_path / "out" / "last.pth")]) != 0
    assert sorted(os.listdir(tmp_path / "out")) == before


def test_amp_on_cpu_trains_in_bfloat16_and_keeps_float32_weights():
    from siamese.model import AllPairs, SiameseNetwork
    from siamese.distributed import Context
    from siamese.settings import TrainingSettings
    from siamese.training import train_one_epoch

    torch.manual_seed(0)
    network = SiameseNetwork("resnet18", image_size=32)
    before = {name: value.clone() for name, value in network.state_dict().items()}
    seen = []
    network.backbone.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    batches = [(torch.randn(8, 3, 32, 32), torch.arange(8) // 2) for _ in range(2)]
    stats = train_one_epoch(AllPairs(network), batches, optimizer, scaler=torch.amp.GradScaler("cuda", enabled=False),
                            settings=TrainingSettings(amp=True), context=Context(device=torch.device("cpu")))
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert stats["pairs"] == 2 * 28 and 0.0 < stats["loss"] < 10.0
    after = network.state_dict()
    assert all(after[n].dtype == before[n].dtype for n in before)
    assert not torch.equal(after["cls_head.1.weight"], before["cls_head.1.weight"])


def test_amp_on_a_cpu_without_bfloat16_says_it_will_be_slow(tmp_path, monkeypatch):
    from siamese import device
    from siamese.errors import UserError
    from siamese.settings import TrainingSettings
    from siamese.training import fit

    lines = []
    monkeypatch.setattr(device, "cpu_has_bfloat16", lambda: False)
    with pytest.raises(UserError):  # stops at the missing folder, after the note
        fit(TrainingSettings(device="cpu", amp=True), train=str(tmp_path / "missing"), val=str(tmp_path / "missing"),
            out_path=str(tmp_path / "out"), log=lines.append)
    assert any("no bfloat16 instructions" in line and "slower" in line for line in lines)
    assert not os.path.exists(tmp_path / "out")


def test_constant_validation_scores_get_a_note(tiny_dataset, tmp_path, monkeypatch, capsys):
    from siamese.predict import TorchPredictor

    monkeypatch.setattr(TorchPredictor, "score_features", lambda self, f1, f2: np.full(len(f1), 0.3))
    train_dir, val_dir = tiny_dataset
    assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", str(tmp_path / "out"), "-e", "1",
                       *TINY_TRAIN_ARGS]) == 0
    assert "note: every pair got the same similarity (0.300, to within 1e-6)" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not cpu_has_bfloat16(), reason="this CPU has no bfloat16 instructions: emulated bfloat16 "
                                                   "autocast runs about 10x slower than float32 (minutes a epoch)")
def test_amp_on_cpu_learns_the_demo_digits(tmp_path):
    from siamese.demo import build_digits_dataset

    train_dir, val_dir, _ = build_digits_dataset(str(tmp_path / "digits"))
    assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", str(tmp_path / "out"), "-e", "2",
                       *TINY_TRAIN_ARGS, "--batch-size", "32", "--pairing", "in-batch", "--amp"]) == 0
    checkpoint = torch.load(str(tmp_path / "out" / "best.pth"), weights_only=True)
    assert checkpoint["metrics"]["best"]["auc"] > 0.85
    assert all(v.dtype in (torch.float32, torch.int64) for v in checkpoint["model"].values())


@pytest.mark.parametrize("extra", [[], ["--pairing", "in-batch", "--images-per-class", "2", "--ema", "0.9",
                                         "--class-loss", "0.5", "--jitter", "0.3"]],
                         ids=["sampled", "in-batch-ema-class-loss-jitter"])
@pytest.mark.slow
def test_resume_gives_the_same_weights_as_a_straight_run(tiny_dataset, tmp_path, monkeypatch, extra):
    import siamese.training

    train_dir, val_dir = tiny_dataset
    augmenting = [a for a in TINY_TRAIN_ARGS if a != "--no-augment"]  # augmentation randomness too
    common = ["--train_path", train_dir, "--val_path", val_dir, *augmenting, "--workers", "1", "--seed", "7",
              "-e", "2", "--lr-schedule", "cosine", *extra]
    assert train.main([*common, "-o", str(tmp_path / "straight")]) == 0

    real_epoch, calls = siamese.training.train_one_epoch, []

    def stop_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(siamese.training, "train_one_epoch", stop_in_second_epoch)
    assert train.main([*common, "-o", str(tmp_path / "resumed")]) == 130
    monkeypatch.undo()
    assert train.main([*common, "-o", str(tmp_path / "resumed"), "--resume", str(tmp_path / "resumed" / "last.pth")]) == 0
    a = torch.load(str(tmp_path / "straight" / "last.pth"), weights_only=True)
    b = torch.load(str(tmp_path / "resumed" / "last.pth"), weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    weights = ["model", "training_model", "classifier"] if extra else ["model"]
    assert ("training_model" in a) == ("classifier" in a) == bool(extra)
    if extra:  # the average's warm-up continues where it stopped
        assert a["average_steps"] == b["average_steps"] > 0
    for key in weights:
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value, rtol=0, atol=0, msg=f"{key} {name}")
    with open(tmp_path / "resumed" / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty", "holds no images"),
    ("one_class", "only one class"),
    ("singletons", "has two images"),
    ("one_kind_of_validation_pair", "validation pairs drawn from"),
    ("corrupt", "bad.png"),
    ("backbone", "unknown backbone"),
    ("weights", "does not fit backbone resnet18"),
    ("images_per_class", "fewer than two classes have 7 images"),
    ("in_batch_size", "--batch-size (images) of at least two classes' worth"),
    ("unwritable", "cannot write to output folder"),
    ("mirror_with_flips", "--mirror-classes needs --augment affine"),
    ("mirror_with_flip_alone", "the flip of --augment flip would mix"),
    ("erase", "--erase is a probability between 0 and 1"),
    ("jitter", "--jitter is a strength from 0 (off) up to, not including, 1"),
    ("eval_batch_size", "--eval-batch-size must be at least 1"),
    ("class_loss_sampled", "--class-loss must be 0 (off) or a positive weight, with --pairing in-batch"),
    ("class_scale_alone", "--class-scale must be 0 (a linear classifier) or a positive scale with --class-loss"),
    ("class_margin_alone", "--class-margin must be 0 (off) or a cosine margin below 1, with --class-scale"),
    ("class_loss_resume", "was trained without --class-loss; resume it without --class-loss"),
    ("class_count_resume", "training classes, but this run has"),
    ("altered_resume", "does not match its recorded model resnet34"),
    ("image_size", "--image-size must be at least 1 pixel, not 0"),
    ("learning_rate", "--learning-rate must be above 0, not -0.001"),
    ("weight_decay", "--weight-decay must be at least 0, not -1"),
    ("dropout", "--dropout is a probability from 0 up to, not including, 1, not 1.5"),
    ("workers", "--workers must be at least 0, not -1"),
    ("val_pairs_per_image", "--val-pairs-per-image must be at least 1"),
    ("size_for_backbone", "vit_b_16 cannot take 32 px images (Wrong image height! Expected 224 but got 32!)"),
])
def test_bad_input_is_one_clear_line(tiny_dataset, tmp_path, capsys, case, message):
    train_dir, val_dir = tiny_dataset
    out = str(tmp_path / "out")
    extra = []
    if case == "missing":
        train_dir = str(tmp_path / "nowhere")
    elif case == "empty":
        train_dir = str(tmp_path / "empty")
        os.makedirs(train_dir)
    elif case == "one_class":
        train_dir = make_folder(str(tmp_path / "one"), classes=1)
    elif case == "singletons":
        train_dir = make_folder(str(tmp_path / "single"), classes=3, per_class=1)
    elif case == "one_kind_of_validation_pair":  # 3 images: a seed where every pair drawn is different-class
        val_dir = make_folder(str(tmp_path / "small_val"), classes=2, per_class=1)
        # class_0 gets a second image (seed 2: none of them is a training image, which would be refused first)
        make_folder(str(tmp_path / "small_val"), classes=1, per_class=2, seed=2)
        folder = scan_folder(val_dir)
        seed = next(s for s in range(100) if not any(p.same for p in evaluation_pairs(folder, seed=s)))
        extra = ["--seed", str(seed)]
    elif case == "corrupt":
        train_dir = make_folder(str(tmp_path / "corrupt"))
        with open(os.path.join(train_dir, "class_1", "bad.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\nnot really")
    elif case == "backbone":
        extra = ["-b", "resnet181"]
    elif case == "weights":
        weights = tmp_path / "w.pth"
        torch.save({"conv.weight": torch.zeros(1)}, weights)
        extra = ["--weights", str(weights)]
    elif case == "images_per_class":
        extra = ["--pairing", "in-batch", "--images-per-class", "7", "--batch-size", "14"]
    elif case == "in_batch_size":
        extra = ["--pairing", "in-batch", "--images-per-class", "4", "--batch-size", "6"]
    elif case == "class_scale_alone":
        extra = ["--class-scale", "16"]
    elif case == "class_margin_alone":
        extra = ["--pairing", "in-batch", "--images-per-class", "2", "--class-loss", "1", "--class-margin", "0.1"]
    elif case == "erase":
        extra = ["--erase", "1.5"]
    elif case == "jitter":
        extra = ["--jitter", "1"]
    elif case == "eval_batch_size":
        extra = ["--eval-batch-size", "0"]
    elif case == "class_loss_sampled":
        extra = ["--class-loss", "1"]
    elif case == "class_loss_resume":
        run = str(tmp_path / "plain")
        assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", run, "-e", "1", *TINY_TRAIN_ARGS,
                           "--pairing", "in-batch", "--images-per-class", "2"]) == 0
        capsys.readouterr()
        extra = ["--pairing", "in-batch", "--images-per-class", "2", "--class-loss", "1",
                 "--resume", os.path.join(run, "last.pth"), "-e", "2"]
    elif case == "class_count_resume":  # turned copies as classes: 4x the classes of the run resumed
        run = str(tmp_path / "classified")
        in_batch = ["--pairing", "in-batch", "--images-per-class", "2", "--class-loss", "1"]
        assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", run, "-e", "1", *TINY_TRAIN_ARGS,
                           *in_batch]) == 0
        capsys.readouterr()
        extra = [*in_batch, "--rotations", "4", "--resume", os.path.join(run, "last.pth"), "-e", "2"]
    elif case == "altered_resume":
        run = str(tmp_path / "altered")
        assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", run, "-e", "1", *TINY_TRAIN_ARGS]) == 0
        capsys.readouterr()
        state = torch.load(os.path.join(run, "last.pth"), weights_only=True)
        state["config"]["backbone"] = "resnet34"
        torch.save(state, os.path.join(run, "last.pth"))
        extra = ["--resume", os.path.join(run, "last.pth"), "-e", "2"]
    elif case in ("learning_rate", "weight_decay", "dropout", "workers"):
        value = {"learning_rate": "-0.001", "weight_decay": "-1", "dropout": "1.5", "workers": "-1"}[case]
        extra = ["-lr" if case == "learning_rate" else "--" + case.replace("_", "-"), value]
    elif case == "val_pairs_per_image":
        extra = ["--val-pairs-per-image", "0"]
    elif case == "image_size":
        extra = ["--image-size", "0"]
    elif case == "size_for_backbone":
        extra = ["-b", "vit_b_16"]  # TINY_TRAIN_ARGS train at 32 px
    elif case in ("mirror_with_flips", "mirror_with_flip_alone"):
        extra = ["--augment", "full" if case == "mirror_with_flips" else "flip", "--mirror-classes"]
    elif case == "unwritable":
        out = str(tmp_path / "file")
        open(out, "w").close()
        out = os.path.join(out, "sub")
    assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", out, "-e", "1",
                       *TINY_TRAIN_ARGS, *extra]) == 2
    assert message in _error_line(capsys)
    if case != "unwritable":
        assert not os.path.exists(out)  # stopped before writing anything, not even an empty folder


@pytest.mark.slow
def test_script_exits_non_zero_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--train_path", str(tmp_path / "x"),
                             "--val_path", str(tmp_path / "y"), "-o", str(tmp_path / "o")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: training folder") and "Traceback" not in result.stderr


@pytest.mark.slow
def test_interrupted_run_keeps_its_checkpoints(tiny_dataset, tmp_path, monkeypatch):
    train_dir, val_dir = tiny_dataset
    out = str(tmp_path / "out")
    assert run_train(train_dir, val_dir, out, "-e", "1") == 0
    before = {name: open(os.path.join(out, name), "rb").read() for name in ("best.pth", "last.pth")}

    import siamese.training

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(siamese.training, "train_one_epoch", interrupt)
    assert run_train(train_dir, val_dir, out, "-e", "3", "--resume", os.path.join(out, "last.pth")) == 130
    for name, data in before.items():
        assert open(os.path.join(out, name), "rb").read() == data
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]


@pytest.mark.slow
def test_a_new_run_never_trains_over_an_earlier_one(tiny_dataset, tmp_path, capsys):
    train_dir, val_dir = tiny_dataset
    out = str(tmp_path / "out")
    assert run_train(train_dir, val_dir, out, "-e", "1") == 0
    before = {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out)) if "." in name}
    events = os.listdir(os.path.join(out, "tensorboard"))
    capsys.readouterr()
    assert run_train(train_dir, val_dir, out, "-e", "1", "--seed", "5") == 2
    assert f"output folder '{out}' already holds a training run (best.pth, last.pth)" in _error_line(capsys)
    assert {name: open(os.path.join(out, name), "rb").read() for name in before} == before
    assert os.listdir(os.path.join(out, "tensorboard")) == events  # no second run's curves mixed in


@pytest.mark.parametrize("pairing, pairs", [
    # 24 images: each rank gets 12 pairs = one full batch of 8 (drop_last); reduced over both ranks
    ("sampled", 16),
    # 4 classes x 6 images in groups of 2: 12 groups, 4 per batch of 8 images, 3 batches: one per
    # rank (the odd one waits), 8 * 7 / 2 pairs each; with the --class-loss classifier in the
    # synchronised model
    ("in-batch", 56),
])
@pytest.mark.slow
def test_torchrun_two_cpu_processes(tiny_dataset, tmp_path, pairing, pairs):
    train_dir, val_dir = tiny_dataset
    out = str(tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             os.path.join(ROOT, "train.py"), "--train_path", train_dir, "--val_path", val_dir,
                             "-o", out, "-e", "2", *TINY_TRAIN_ARGS, "--pairing", pairing, "--images-per-class", "2",
                             *(["--class-loss", "1"] if pairing == "in-batch" else [])],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 2/2:") == 1  # only rank 0 prints
    assert json.load(open(os.path.join(out, "args.json")))["world_size"] == 2
    checkpoint = torch.load(os.path.join(out, "last.pth"), weights_only=True)
    assert checkpoint["metrics"]["train"]["pairs"] == pairs
    assert ("class_loss" in checkpoint["metrics"]["train"]) == (pairing == "in-batch")
    assert checkpoint["epoch"] == 2 and "auc" in checkpoint["metrics"]["val"]


@pytest.mark.slow
def test_the_stored_threshold_is_given_or_calibrated_at_a_false_accept_rate(tiny_dataset, tmp_path, capsys):
    from siamese.checkpoint import load_model
    from siamese.evaluate import evaluate
    from siamese.metrics import threshold_at_far
    from siamese.predict import TorchPredictor

    train_dir, val_dir = tiny_dataset
    given = str(tmp_path / "given")
    assert train.main(["--train_path", train_dir, "-o", given, "-e", "1", "--threshold", "0.73", *TINY_TRAIN_ARGS]) == 0
    assert torch.load(os.path.join(given, "last.pth"), weights_only=True)["threshold"] == 0.73  # no validation needed
    assert train.main(["--train_path", train_dir, "-o", str(tmp_path / "x"), "-e", "1", "--threshold-at-far", "0.1",
                       *TINY_TRAIN_ARGS]) == 2
    assert "--threshold-at-far calibrates on the validation pairs: give --val-path" in capsys.readouterr().err
    assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", str(tmp_path / "y"), "-e", "1",
                       "--threshold", "0.5", "--threshold-at-far", "0.1", *TINY_TRAIN_ARGS]) == 2
    assert "not both" in capsys.readouterr().err
    calibrated = str(tmp_path / "far")
    assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", calibrated, "-e", "1",
                       "--threshold-at-far", "0.25", *TINY_TRAIN_ARGS]) == 0
    model, checkpoint = load_model(os.path.join(calibrated, "best.pth"))
    pairs = evaluation_pairs(scan_folder(val_dir), seed=0, pairs_per_image=1)
    result = evaluate(TorchPredictor(model), pairs)
    expected = threshold_at_far(result.scores, result.labels, 0.25)
    assert checkpoint["threshold"] == pytest.approx(expected["threshold"], abs=1e-6) and expected["far"] <= 0.25
