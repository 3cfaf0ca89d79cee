"""GPU speed choices, tested on a CPU: the precision --amp picks for a GPU's compute capability,
TF32 and cuDNN set-up, channels_last by default on GPUs, --compile (refused in one line where it
cannot work; on a CPU it trains, and checkpoints keep the plain model's keys), the embedding
batch for GPUs, and an epoch's fixed cost (one checkpoint write, validation images decoded once)."""

import os
import shutil

import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN_ARGS
from siamese import device as devices
from siamese.errors import UserError


def _train(tiny_dataset, out, *extra):
    import train

    return train.main(["--train_path", tiny_dataset[0], "--val_path", tiny_dataset[1], "-o", str(out),
                       *TINY_TRAIN_ARGS, *extra])


@pytest.mark.parametrize("capability, dtype", [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16),
                                               ((8, 6), torch.bfloat16), ((7, 5), torch.float16),
                                               ((6, 1), torch.float16)])
def test_amp_computes_in_bfloat16_from_ampere_on_and_float16_before(capability, dtype):
    assert devices.amp_dtype("cuda", capability) == dtype
    assert devices.amp_dtype("cpu") == torch.bfloat16


def test_amp_on_a_gpu_without_half_precision_is_one_line():
    with pytest.raises(UserError, match="--amp.*compute capability 5.0.*without --amp"):
        devices.amp_dtype("cuda:0", (5, 0))


@pytest.mark.parametrize("capability, scaled", [((9, 0), False), ((7, 0), True)])
def test_only_float16_steps_through_a_gradient_scaler(monkeypatch, capability, scaled):
    asked = {}
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: asked.setdefault("enabled", enabled))
    devices.grad_scaler("cuda", True, capability)
    assert asked["enabled"] is scaled
    asked.clear()
    devices.grad_scaler("cuda", False, capability)
    assert asked["enabled"] is False


@pytest.fixture
def cuda_flags():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _flags():
    return torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def test_tf32_and_cudnn_benchmark_on_ampere_and_newer_unless_turned_off(cuda_flags):
    torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = False
    assert devices.configure_cuda("cpu", True) is False and _flags()[0] is False  # a CPU: nothing changes
    assert devices.configure_cuda("cuda", True, capability=(9, 0)) is True
    assert _flags() == (True, True, True)
    assert devices.configure_cuda("cuda", False, capability=(9, 0)) is False
    assert _flags() == (True, False, False)
    assert devices.configure_cuda("cuda", True, capability=(7, 5)) is False  # no TF32 before Ampere
    assert _flags() == (True, False, False)


def test_channels_last_is_the_default_on_gpus_only():
    from train import parse_args
    from siamese.settings import TrainingSettings

    assert devices.channels_last_for("cuda") and devices.channels_last_for("cuda:1")
    assert not devices.channels_last_for("cpu")
    assert not devices.channels_last_for("cuda", False) and devices.channels_last_for("cpu", True)
    base = ["--train-path", "x", "-o", "y"]
    assert TrainingSettings.from_namespace(parse_args(base)).channels_last is None
    assert TrainingSettings.from_namespace(parse_args(base + ["--no-channels-last"])).channels_last is False
    settings = TrainingSettings.from_namespace(parse_args(base + ["--no-tf32", "--compile"]))
    assert settings.tf32 is False and settings.compile is True


def test_embedding_batches_are_256_images_on_a_gpu_and_unchanged_on_a_cpu():
    from siamese.predict import default_batch_size

    assert default_batch_size("cuda", 224) == default_batch_size("cuda:1", 32) == 256
    assert [default_batch_size("cpu", size) for size in (224, 64)] == [8, 64]


@pytest.mark.parametrize("broken", ["no torch.compile", "no compiler"])
def test_compile_where_it_cannot_work_is_one_line_and_writes_nothing(tiny_dataset, tmp_path, monkeypatch, capsys,
                                                                     broken):
    if broken == "no torch.compile":
        monkeypatch.delattr(torch, "compile")
    else:
        monkeypatch.setattr(shutil, "which", lambda name: None)
    out = tmp_path / "run"
    assert _train(tiny_dataset, out, "--compile") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --compile") and "without --compile" in err[0]
    assert not out.exists()


def test_eval_compile_where_it_cannot_work_is_one_line_and_writes_nothing(trained_checkpoint, tiny_dataset, tmp_path,
                                                                          monkeypatch, capsys):
    import eval as evaluation

    monkeypatch.delattr(torch, "compile")
    out = tmp_path / "eval"
    assert evaluation.main(["-c", trained_checkpoint, "-v", tiny_dataset[1], "-o", str(out), "--compile"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --compile")
    assert not out.exists()


def test_a_checkpoint_is_written_under_each_of_its_names_as_a_file_of_its_own(tmp_path):
    from siamese.checkpoint import CheckpointWriter

    writer = CheckpointWriter()
    best, last = str(tmp_path / "best.pth"), str(tmp_path / "last.pth")
    writer.write({"epoch": 1}, [best, last])
    writer.write({"epoch": 2}, [last])  # waits for the first
    writer.wait()
    assert torch.load(best)["epoch"] == 1 and torch.load(last)["epoch"] == 2  # best kept its own copy
    writer.write({"epoch": 3}, [best, last])
    writer.wait()
    assert os.stat(best).st_ino != os.stat(last).st_ino  # a copy over one, or an edit in place, leaves the other
    assert torch.load(best)["epoch"] == torch.load(last)["epoch"] == 3
    assert sorted(os.listdir(tmp_path)) == ["best.pth", "last.pth"]  # no temporary file left


def test_a_failed_background_write_is_raised_by_the_next_one_and_keeps_the_file(tmp_path, monkeypatch):
    from siamese import checkpoint

    writer = checkpoint.CheckpointWriter()
    last = str(tmp_path / "last.pth")
    writer.write({"epoch": 1}, [last])
    writer.wait()

    def full(*args, **kwargs):
        raise UserError("no space left")

    monkeypatch.setattr(checkpoint, "atomic_open", full)
    writer.write({"epoch": 2}, [last])
    with pytest.raises(UserError, match="no space left"):
        writer.wait()
    assert torch.load(last)["epoch"] == 1


def test_validation_images_are_decoded_once_per_run(trained_checkpoint, tiny_dataset, monkeypatch):
    from siamese import data
    from siamese.checkpoint import load_model
    from siamese.images import scan_folder
    from siamese.predict import TorchPredictor

    decoded = []
    original = data.ImageFiles.__getitem__
    monkeypatch.setattr(data.ImageFiles, "__getitem__", lambda self, i: decoded.append(i) or original(self, i))
    paths = scan_folder(tiny_dataset[1]).paths
    predictor = TorchPredictor(load_model(trained_checkpoint)[0], cache_images=True)
    first = predictor.embed_paths(paths)
    second = predictor.embed_paths(paths)
    assert len(decoded) == len(paths)
    np.testing.assert_array_equal(first, second)
    predictor.embed_paths(paths[:3])  # other paths: decoded
    assert len(decoded) == len(paths) + 3


@pytest.mark.slow
def test_compiled_training_and_embedding_on_a_cpu_keep_plain_checkpoints(tiny_dataset, trained_checkpoint, tmp_path,
                                                                        capsys):
    import eval as evaluation
    from siamese.checkpoint import load_model
    from siamese.images import scan_folder
    from siamese.predict import TorchPredictor

    out = tmp_path / "run"
    assert _train(tiny_dataset, out, "--compile", "--ema", "0.9", "-e", "1") == 0
    assert "torch.compile: the first training step" in capsys.readouterr().out
    plain = set(load_model(trained_checkpoint)[0].state_dict())
    for name in ("best.pth", "last.pth"):
        state = torch.load(out / name, weights_only=True)
        for part in ("model", "training_model"):
            assert set(state[part]) == plain, part  # no '_orig_mod.' keys
    assert not any("_orig_mod" in key for key in state["optimizer"]["state"].__repr__().split())
    model = load_model(trained_checkpoint)[0]
    paths = scan_folder(tiny_dataset[1]).paths
    np.testing.assert_allclose(TorchPredictor(model, compile=True, batch_size=4).embed_paths(paths),
                               TorchPredictor(model).embed_paths(paths), atol=1e-4)
    assert evaluation.main(["-c", trained_checkpoint, "-v", tiny_dataset[1], "-o", str(tmp_path / "e"), "--compile",
                            "--workers", "0"]) == 0
    assert "torch.compile: the embedder compiled" in capsys.readouterr().err
