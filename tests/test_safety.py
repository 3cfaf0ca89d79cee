"""Nothing lost: out paths that would destroy an input or another run's work are refused, a
failed or interrupted command leaves earlier files as they were, and bad numbers, checkpoints
and pair lists are one line each."""

import errno
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_script
import torch_to_onnx
import train
from conftest import TINY_TRAIN_ARGS, make_folder
from siamese.files import claim_beside, claim_folder
from siamese.images import load_image, scan_folder


def _error_line(capsys):
    """The one error line (progress bars may stand before it on stderr), and no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _contents(folder):
    """{relative path: bytes} of every file below folder."""
    found = {}
    for parent, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(parent, name)
            found[os.path.relpath(path, folder)] = open(path, "rb").read()
    return found


def _train(tiny_dataset, out, *extra):
    return train.main(["--train_path", tiny_dataset[0], "--val_path", tiny_dataset[1], "-o", out, *TINY_TRAIN_ARGS, *extra])


@pytest.mark.slow
def test_an_export_never_replaces_its_checkpoint_or_an_existing_file(trained_checkpoint, tiny_dataset, tmp_path, capsys):
    before = open(trained_checkpoint, "rb").read()
    assert torch_to_onnx.main(["-c", trained_checkpoint, "-o", trained_checkpoint]) == 2
    assert "is the input" in _error_line(capsys)
    assert torch_to_onnx.main(["-c", trained_checkpoint, "-o", trained_checkpoint, "--force"]) == 2  # never, even forced
    assert "is the input" in _error_line(capsys)
    assert open(trained_checkpoint, "rb").read() == before
    taken = tmp_path / "taken.onnx"
    taken.write_bytes(b"someone's file")
    assert torch_to_onnx.main(["-c", trained_checkpoint, "-o", str(taken)]) == 2
    assert "already exists" in _error_line(capsys) and taken.read_bytes() == b"someone's file"
    assert torch_to_onnx.main(["-c", trained_checkpoint, "-o", str(taken), "--force", "--images", tiny_dataset[1]]) == 0
    assert taken.read_bytes()[:4] != b"some"


@pytest.mark.slow
def test_a_failed_export_check_leaves_the_earlier_export_as_it_was(trained_checkpoint, tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "model.onnx")
    export = ["-c", trained_checkpoint, "-o", out, "--images", tiny_dataset[1]]
    assert torch_to_onnx.main(export) == 0
    good = open(out, "rb").read()
    capsys.readouterr()
    assert torch_to_onnx.main([*export, "--force", "--fp16", "--tolerance", "1e-9"]) == 2
    line = _error_line(capsys)
    assert "kept it as" in line and "is as it was" in line
    assert open(out, "rb").read() == good
    assert os.path.exists(out + ".failed")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


@pytest.mark.parametrize("value", ["nan", "-1", "0"])
def test_export_tolerance_must_be_a_positive_number(trained_checkpoint, tmp_path, capsys, value):
    assert torch_to_onnx.main(["-c", trained_checkpoint, "-o", str(tmp_path / "m.onnx"), "--tolerance", value]) == 2
    assert "--tolerance" in _error_line(capsys) and not os.listdir(tmp_path)


def test_a_claimed_out_path_refuses_a_second_run(tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "run")
    claim = claim_folder(out)  # as a run in another process holds it
    try:
        assert _train(tiny_dataset, out, "-e", "1") == 2
        assert "is in use by another command" in _error_line(capsys)
        assert not os.path.exists(os.path.join(out, "args.json"))
    finally:
        claim.__exit__(None, None, None)
    assert _train(tiny_dataset, out, "-e", "1") == 0  # released: the path is free again


@pytest.mark.slow
def test_resume_into_a_folder_of_another_run_is_refused(tiny_dataset, tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert _train(tiny_dataset, a, "-e", "1") == 0
    assert _train(tiny_dataset, b, "-e", "1", "--seed", "4") == 0
    before = _contents(b)
    capsys.readouterr()
    assert _train(tiny_dataset, b, "-e", "2", "--resume", os.path.join(a, "last.pth")) == 2
    assert "holds another training run" in _error_line(capsys)
    assert _contents(b) == before
    # its own folder, and a new one, are fine
    assert _train(tiny_dataset, str(tmp_path / "c"), "-e", "2", "--resume", os.path.join(a, "last.pth")) == 0
    assert _train(tiny_dataset, a, "-e", "2", "--resume", os.path.join(a, "last.pth")) == 0


def test_a_run_killed_before_its_first_checkpoint_does_not_block_the_path(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x")
    (out / "args.json").write_text("{}")
    (out / "metrics.csv").write_text("epoch\n")
    (out / ".tmp-last.pth.999999.1").write_bytes(b"half a checkpoint")  # a killed save
    assert _train(tiny_dataset, str(out), "-e", "1") == 0
    assert "stopped before its first checkpoint" in capsys.readouterr().out
    assert not (out / "tensorboard" / "events.out.tfevents.1").exists()
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]
    assert json.load(open(out / "args.json"))["run_id"]


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_earlier_one(tiny_dataset, tmp_path, capsys,
                                                                                    monkeypatch):
    out = str(tmp_path / "run")
    assert _train(tiny_dataset, out, "-e", "1") == 0
    before = _contents(out)
    import siamese.files

    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(siamese.files.os, "fsync", full)
    capsys.readouterr()
    assert _train(tiny_dataset, out, "-e", "2", "--resume", os.path.join(out, "last.pth")) == 2
    assert "no space left on the device that holds" in _error_line(capsys)
    monkeypatch.setattr(siamese.files.os, "fsync", real_fsync)
    assert torch.load(os.path.join(out, "last.pth"), weights_only=True)["epoch"] == 1
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]
    assert {k: v for k, v in _contents(out).items() if k.endswith(".pth")} == \
        {k: v for k, v in before.items() if k.endswith(".pth")}


def test_training_that_diverges_stops_in_one_line_without_a_checkpoint(tiny_dataset, tmp_path, capsys, monkeypatch):
    import siamese.training

    # a loss that turns NaN, as a too large learning rate makes it (-lr itself is bounded at 10)
    loss = siamese.training.binary_cross_entropy_with_logits
    monkeypatch.setattr(siamese.training, "binary_cross_entropy_with_logits",
                        lambda *args, **kwargs: loss(*args, **kwargs) * float("nan"))
    out = str(tmp_path / "run")
    assert _train(tiny_dataset, out, "-e", "1", "--no-augment") == 2
    assert "training diverged in epoch 1" in _error_line(capsys)
    assert not os.path.exists(os.path.join(out, "last.pth")) and not os.path.exists(os.path.join(out, "best.pth"))


@pytest.mark.parametrize("option, value", [("--weight-decay", "nan"), ("-lr", "inf"), ("--class-loss", "nan"),
                                           ("--seed", "-1"), ("--weight-decay", "inf")])
def test_training_numbers_are_checked_where_they_enter(tiny_dataset, tmp_path, capsys, option, value):
    out = str(tmp_path / "run")
    extra = ["--pairing", "in-batch", "--images-per-class", "2"] if option == "--class-loss" else []
    assert _train(tiny_dataset, out, "-e", "1", *extra, option, value) == 2
    assert _error_line(capsys) and not os.path.exists(out)


def _edited_checkpoint(source, path, edit):
    checkpoint = torch.load(source, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)
    return str(path)


@pytest.mark.parametrize("name, edit, message", [
    ("size", lambda c: c["config"].update(image_size=-3), "image_size is -3"),
    ("version", lambda c: c.update(format_version="1"), "format_version is '1'"),
    ("config", lambda c: c.pop("config"), "no model config"),
    ("std", lambda c: c["config"].update(std=[0.0, 0.0, 0.0]), "std"),
    ("mean", lambda c: c["config"].update(mean=[0.5, 0.5]), "mean"),
    ("nan", lambda c: c["model"]["cls_head.1.weight"].fill_(float("nan")), "not finite numbers"),
])
def test_an_altered_checkpoint_is_one_line_and_writes_nothing(trained_checkpoint, tiny_dataset, tmp_path, capsys, name,
                                                             edit, message):
    checkpoint = _edited_checkpoint(trained_checkpoint, tmp_path / f"{name}.pth", edit)
    out = str(tmp_path / "eval")
    assert eval_script.main(["-v", tiny_dataset[1], "-o", out, "-c", checkpoint]) == 2
    assert message in _error_line(capsys)
    assert not os.path.exists(out)


@pytest.mark.parametrize("option, value", [("--threshold", "nan"), ("--threshold", "2"), ("--threshold", "-1"),
                                           ("--threshold", "inf"), ("--seed", "-1")])
def test_evaluation_numbers_are_checked_where_they_enter(trained_checkpoint, tiny_dataset, tmp_path, capsys, option,
                                                         value):
    out = str(tmp_path / "eval")
    assert eval_script.main(["-v", tiny_dataset[1], "-o", out, "-c", trained_checkpoint, option, value]) == 2
    assert option in _error_line(capsys) and not os.path.exists(out)


def test_an_out_path_inside_the_image_folder_is_refused(trained_checkpoint, tmp_path, capsys):
    data = make_folder(str(tmp_path / "data"))
    for out in (data, os.path.join(data, "results")):
        assert eval_script.main(["-v", data, "-o", out, "-c", trained_checkpoint]) == 2
        assert "is inside the image folder" in _error_line(capsys)
    other = make_folder(str(tmp_path / "other"), seed=4)  # no image of data/ (that would be refused first)
    assert train.main(["--train_path", data, "--val_path", other, "-o", os.path.join(other, "run"),
                       *TINY_TRAIN_ARGS]) == 2
    assert "is inside the image folder" in _error_line(capsys)
    assert sorted(os.listdir(data)) == ["class_0", "class_1", "class_2"]


def test_an_evaluation_appears_whole_and_replaces_only_an_evaluation(trained_checkpoint, tiny_dataset, tmp_path, capsys,
                                                                   monkeypatch):
    out = str(tmp_path / "eval")
    args = ["-v", tiny_dataset[1], "-o", out, "-c", trained_checkpoint]
    assert eval_script.main(args) == 0
    first = _contents(out)
    import siamese.report

    def crash(*a, **k):
        raise UnicodeEncodeError("utf-8", "x", 0, 1, "a file name that cannot be written")

    monkeypatch.setattr(siamese.report, "write_pair_pictures", crash)
    with pytest.raises(UnicodeEncodeError):
        eval_script.main([*args, "--seed", "7"])
    assert _contents(out) == first  # the earlier evaluation, whole, and nothing of the failed one
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    monkeypatch.undo()
    assert eval_script.main([*args, "--seed", "7"]) == 0
    assert json.load(open(os.path.join(out, "metrics.json")))["seed"] == 7
    # a folder that holds something else is not replaced
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pth").write_bytes(b"a week of training")
    capsys.readouterr()
    assert eval_script.main(["-v", tiny_dataset[1], "-o", str(run), "-c", trained_checkpoint]) == 2
    assert "not an evaluation's" in _error_line(capsys)
    assert (run / "last.pth").read_bytes() == b"a week of training"


def test_two_evaluations_into_one_path_at_once_are_refused(trained_checkpoint, tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "eval")
    with claim_beside(out, what="evaluation out path"):  # as another eval.py holds it
        assert eval_script.main(["-v", tiny_dataset[1], "-o", out, "-c", trained_checkpoint]) == 2
    assert "in use by another command" in _error_line(capsys)
    assert not os.path.exists(out)


@pytest.mark.parametrize("row, message", [
    ("{abs},val/class_1/img_00.png,0", "no absolute paths"),
    ("../val/class_0/img_00.png,class_1/img_00.png,0", "no absolute paths, no '..'"),
    ("class_0/img_01.png,class_0/img_00.png,1", "repeats the pair of line 2"),
])
def test_pair_lists_stay_inside_the_folder_and_list_each_pair_once(trained_checkpoint, tiny_dataset, tmp_path, capsys,
                                                                   row, message):
    pairs = tmp_path / "pairs.csv"
    absolute = os.path.join(tiny_dataset[1], "class_0", "img_00.png")
    pairs.write_text("left,right,same\nclass_0/img_00.png,class_0/img_01.png,1\n" + row.format(abs=absolute) + "\n")
    out = str(tmp_path / "eval")
    assert eval_script.main(["-v", tiny_dataset[1], "-o", out, "-c", trained_checkpoint, "--pairs", str(pairs)]) == 2
    assert message in _error_line(capsys) and not os.path.exists(out)


def test_an_unreadable_image_in_a_pair_list_is_found_before_anything_is_written(trained_checkpoint, tmp_path, capsys):
    data = make_folder(str(tmp_path / "data"))
    with open(os.path.join(data, "class_1", "img_00.png"), "r+b") as f:
        f.write(b"not a png header at all")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("left,right,same\nclass_0/img_00.png,class_0/img_01.png,1\nclass_0/img_00.png,class_1/img_00.png,0\n")
    out = str(tmp_path / "eval")
    assert eval_script.main(["-v", data, "-o", out, "-c", trained_checkpoint, "--pairs", str(pairs)]) == 2
    assert "class_1/img_00.png" in _error_line(capsys) and not os.path.exists(out)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # left half white
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # stored on its side: turn 90 degrees clockwise to show
    path = str(tmp_path / "phone.jpg")
    img.save(path, exif=exif, quality=95)
    shown = load_image(path)
    assert shown.size == (20, 40)
    array = np.asarray(shown)
    assert array[:15].mean() > 200 and array[-15:].mean() < 50  # the white half is now on top


def test_images_in_sub_folders_of_a_class_are_taken(tmp_path):
    data = make_folder(str(tmp_path / "data"), per_class=3)
    os.makedirs(os.path.join(data, "class_0", "session2"))
    os.rename(os.path.join(data, "class_0", "img_02.png"), os.path.join(data, "class_0", "session2", "a.png"))
    folder = scan_folder(data)
    assert len(folder) == 9
    assert os.path.join(data, "class_0", "session2", "a.png") in folder.paths
    assert folder.labels[folder.paths.index(os.path.join(data, "class_0", "session2", "a.png"))] == 0


def test_json_never_holds_nan(tmp_path):
    from siamese.files import write_json

    path = str(tmp_path / "m.json")
    write_json(path, {"auc": float("nan"), "rates": [float("inf"), 0.5]})
    assert json.loads(open(path).read()) == {"auc": None, "rates": [None, 0.5]}


def _edited_onnx(source, path, *, metadata=None, rename_output=None):
    import onnx

    model = onnx.load(source)
    for prop in model.metadata_props:
        if metadata and prop.key in metadata:
            prop.value = metadata[prop.key]
    if rename_output:
        old = model.graph.output[0].name
        for node in model.graph.node:
            node.output[:] = [rename_output if o == old else o for o in node.output]
        model.graph.output[0].name = rename_output
    onnx.save(model, path)
    return str(path)


@pytest.mark.parametrize("name, metadata, rename, message", [
    ("zero", {"siamese.image_size": "0"}, None, "image size '0'"),
    ("negative", {"siamese.image_size": "-3"}, None, "image size '-3'"),
    ("huge", {"siamese.image_size": "99999999"}, None, "image size '99999999'"),
    ("other", {"siamese.image_size": "48"}, None, "metadata says (N, 3, 48, 48)"),
    ("mean", {"siamese.mean": "[0.5, 0.5]"}, None, "mean or std"),
    ("std", {"siamese.std": "[0, 0, 0]"}, None, "at or below 0"),
    ("threshold", {"siamese.threshold": "abc"}, None, "threshold 'abc'"),
    ("renamed", None, "score", "not one named 'similarity'"),
])
def test_an_edited_onnx_file_is_one_line(onnx_model, tiny_dataset, tmp_path, capsys, name, metadata, rename, message):
    import infer_tensorrt

    path = _edited_onnx(onnx_model, tmp_path / f"{name}.onnx", metadata=metadata, rename_output=rename)
    image = os.path.join(tiny_dataset[1], "class_0", "img_00.png")
    assert infer_tensorrt.main(["--image1", image, "--image2", image, "--engine", path]) == 2
    assert message in _error_line(capsys)


# --- a resumed run: the images it learned before, and its best.pth -------------------------------

@pytest.mark.slow
def test_a_resume_on_other_folders_never_validates_on_what_it_learned_and_records_both(tiny_dataset, tmp_path,
                                                                                       capsys):
    from siamese.checkpoint import training_keys
    from siamese.lineage import content_keys

    train_dir, val_dir = tiny_dataset
    run = str(tmp_path / "run")
    assert _train(tiny_dataset, run, "-e", "1") == 0
    before = _contents(run)
    capsys.readouterr()
    resume = ["-o", run, "--resume", os.path.join(run, "last.pth"), *TINY_TRAIN_ARGS, "-e", "2"]
    assert train.main(["--train-path", val_dir, "--val-path", train_dir, *resume]) == 2  # swapped: train/ was learned
    line = _error_line(capsys)
    assert f"validation folder '{train_dir}' shares" in line and "was trained on" in line
    assert _contents(run) == before
    other = make_folder(str(tmp_path / "other"), classes=3, size=26, seed=5)
    assert train.main(["--train-path", val_dir, "--val-path", other, *resume]) == 0
    assert f"was trained on '{train_dir}'" in capsys.readouterr().out  # the note
    images = [os.path.join(parent, name) for folder in tiny_dataset for parent, _, names in os.walk(folder)
              for name in names]
    for name in ("last.pth", "best.pth"):
        checkpoint = torch.load(os.path.join(run, name), weights_only=True)
        if checkpoint["epoch"] == 2:
            assert training_keys(checkpoint) == set(content_keys(images))  # both folders
    record = json.load(open(os.path.join(run, "args.json")))
    assert record["train_path"] == [val_dir] and record["earlier_train_path"] == [train_dir]
    assert eval_script.main(["-v", train_dir, "-c", os.path.join(run, "last.pth"), "-o", str(tmp_path / "ev"),
                             "--device", "cpu", "--workers", "0"]) == 0
    assert "training images" in capsys.readouterr().err


@pytest.mark.slow
def test_a_resume_checks_the_folders_best_pth_and_says_where_the_best_is(tiny_dataset, tmp_path, capsys):
    import shutil

    a, b, c, e = (str(tmp_path / name) for name in "abce")
    assert _train(tiny_dataset, a, "-e", "2") == 0
    assert _train(tiny_dataset, b, "-e", "1", "--seed", "4") == 0
    shutil.copytree(a, c)
    shutil.copy(os.path.join(b, "best.pth"), os.path.join(c, "best.pth"))  # another run's best.pth
    before = _contents(c)
    capsys.readouterr()
    assert _train(tiny_dataset, c, "-e", "3", "--resume", os.path.join(c, "last.pth")) == 2
    assert "best.pth' belongs to another training run" in _error_line(capsys)
    assert _contents(c) == before
    # into a new folder: the summary names the best.pth that holds the best epoch
    assert _train(tiny_dataset, e, "-e", "3", "--resume", os.path.join(a, "last.pth")) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    best_epoch = torch.load(os.path.join(e, "last.pth"), weights_only=True)["metrics"]["best"]["epoch"]
    if best_epoch == 3:
        assert summary.endswith(f"checkpoints in {e}") and os.path.isfile(os.path.join(e, "best.pth"))
    else:
        assert f"its best.pth is {os.path.join(a, 'best.pth')}" in summary, summary
        assert not os.path.exists(os.path.join(e, "best.pth"))
