"""Fault injection: train.py, eval.py and torch_to_onnx.py killed (SIGKILL, SIGINT) at seeded
random moments of a tiny run, two of each into one path at once, and a full disk. After every
fault, what existed before is whole, and the next command continues or refuses in one line."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY_TRAIN_ARGS

ENV = dict(os.environ, OMP_NUM_THREADS="1")
RNG = np.random.default_rng(2024)


def _start(script, *args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _run(script, *args):
    return _finish(_start(script, *args))


def _kill_after(process, seconds, sig):
    time.sleep(seconds)
    if process.poll() is None:
        process.send_signal(sig)
    return _finish(process)


def _one_line_or_none(rc, err):
    """A command stopped by a fault or refused says so in one line, never with a traceback."""
    assert "Traceback" not in err, err[-2000:]
    if rc == 2:
        assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1, err


def _no_temporary_files(folder):
    left = [os.path.join(p, n) for p, ds, fs in os.walk(folder) for n in fs + ds if n.startswith(".tmp")]
    assert not left, left


def _train_args(tiny_dataset, out, *extra):
    return ["--train_path", tiny_dataset[0], "--val_path", tiny_dataset[1], "-o", out, *TINY_TRAIN_ARGS, *extra]


def _check_run_whole(out):
    """Every checkpoint loads, metrics.csv and args.json parse: nothing half-written."""
    epochs = []
    for name in os.listdir(out):
        if name.endswith(".pth"):
            epochs.append(torch.load(os.path.join(out, name), weights_only=True)["epoch"])
    if os.path.exists(os.path.join(out, "args.json")):
        json.load(open(os.path.join(out, "args.json")))
    if os.path.exists(os.path.join(out, "metrics.csv")):
        rows = open(os.path.join(out, "metrics.csv")).read().splitlines()
        assert rows[0].startswith("epoch,") and all(r.count(",") == rows[0].count(",") for r in rows)
    return max(epochs, default=0)


def test_scripts_read_their_options_before_importing_torch():
    """PyTorch takes seconds to import: the scripts import it inside main(), where a Ctrl-C is the
    one-line message, not a traceback from the middle of an import."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import train, crossval, eval, identify, torch_to_onnx, onnx_to_trt, infer_tensorrt, eval_tensorrt, demo\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))" % ROOT)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def _interrupted_in_one_line(process, seconds):
    """Ctrl-C `seconds` after the start: one line and exit 130 (or, when the signal came before the
    interpreter ran anything, its end by SIGINT with nothing said; or the end of a command that had
    finished), never a traceback. The exit code."""
    rc, _, err = _kill_after(process, seconds, signal.SIGINT)
    assert "Traceback" not in err, (seconds, err[-2000:])
    if rc == 130:
        assert err.splitlines()[-1].startswith("interrupted; files written before are intact"), (seconds, err[-2000:])
    else:
        assert (rc == -signal.SIGINT and err == "") or rc == 0, (seconds, rc, err[-2000:])
    return rc


def test_ctrl_c_during_the_imports_is_one_line(tiny_dataset, tmp_path):
    """A tenth of a second in, train.py is importing (PyTorch takes longer): one line, exit 130."""
    process = _start("train.py", *_train_args(tiny_dataset, str(tmp_path / "run"), "-e", "1000"))
    assert _interrupted_in_one_line(process, 0.1) == 130


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "eval_tensorrt.py"])
def test_ctrl_c_at_any_early_moment_is_one_line(script, tiny_dataset, tmp_path, request):
    if script == "train.py":
        args = _train_args(tiny_dataset, str(tmp_path / "run"), "-e", "1000")
    else:
        args = ["-m", request.getfixturevalue("onnx_model"), "-v", tiny_dataset[1], "-o", str(tmp_path / "eval")]
    codes = [_interrupted_in_one_line(_start(script, *args), seconds) for seconds in (0, 0.05, 0.1, 0.2, 0.3, 0.5, 1)]
    assert codes.count(130) >= 4, codes


@pytest.mark.slow
def test_training_killed_at_random_moments_resumes(tiny_dataset, tmp_path):
    out = str(tmp_path / "run")
    rc, _, err = _run("train.py", *_train_args(tiny_dataset, out, "-e", "1"))
    assert rc == 0, err
    resume = ["--resume", os.path.join(out, "last.pth")]
    done = 1
    for sig, seconds in [(signal.SIGKILL, RNG.uniform(3, 8)), (signal.SIGINT, RNG.uniform(4, 8)),
                         (signal.SIGKILL, RNG.uniform(3, 8))]:
        if done == 6:  # finished already: a resume would be refused as a finished run
            break
        rc, _, err = _kill_after(_start("train.py", *_train_args(tiny_dataset, out, "-e", "6", *resume)), seconds, sig)
        if sig == signal.SIGINT:
            assert rc in (0, 130) and "Traceback" not in err, err[-2000:]
        epoch = _check_run_whole(out)
        assert epoch >= done  # never a step back: the earlier checkpoints are whole
        done = epoch
    rc, _, err = _run("train.py", *_train_args(tiny_dataset, out, "-e", "6", *resume)) if done < 6 else (0, "", "")
    assert rc == 0, err[-2000:]
    assert _check_run_whole(out) == 6
    rc, _, err = _run("train.py", *_train_args(tiny_dataset, out, "-e", "6"))  # a new run over it: refused
    assert rc == 2 and "already holds a training run" in err
    _no_temporary_files(out)


@pytest.mark.slow
def test_a_new_run_killed_before_its_first_checkpoint_leaves_a_usable_path(tiny_dataset, tmp_path):
    out = str(tmp_path / "run")
    process = _start("train.py", *_train_args(tiny_dataset, out, "-e", "3"))
    while process.poll() is None and not os.path.exists(os.path.join(out, "args.json")):
        time.sleep(0.05)
    process.kill()
    _finish(process)
    rc, _, err = _run("train.py", *_train_args(tiny_dataset, out, "-e", "1"))
    assert rc == 0, err[-2000:]


def _evaluation(out):
    """The seed of the evaluation in out, after checking that it is whole."""
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    rows = open(os.path.join(out, "scores.csv")).read().splitlines()
    assert len(rows) == metrics["pairs"] + 1
    assert len(os.listdir(os.path.join(out, "pairs"))) == metrics["pairs"]
    return metrics["seed"]


@pytest.mark.slow
def test_evaluation_killed_at_random_moments_leaves_one_whole_evaluation(trained_checkpoint, tiny_dataset, tmp_path):
    out = str(tmp_path / "eval")
    args = ["-v", tiny_dataset[1], "-o", out, "-c", trained_checkpoint, "--pairs-per-image", "3"]
    rc, _, err = _run("eval.py", *args)
    assert rc == 0, err
    for seed, sig, seconds in [(5, signal.SIGKILL, RNG.uniform(2, 5)), (6, signal.SIGINT, RNG.uniform(3, 6))]:
        rc, _, err = _kill_after(_start("eval.py", *args, "--seed", str(seed)), seconds, sig)
        assert _evaluation(out) in (1, 5, 6)  # an earlier or the new evaluation, whole either way
    rc, _, err = _run("eval.py", *args, "--seed", "8")
    assert rc == 0, err[-2000:]
    assert _evaluation(out) == 8
    _no_temporary_files(str(tmp_path))


@pytest.mark.slow
def test_export_killed_at_random_moments_keeps_the_checkpoint_and_a_whole_export(trained_checkpoint, tiny_dataset,
                                                                               tmp_path):
    import onnx

    out = str(tmp_path / "model.onnx")
    args = ["-c", trained_checkpoint, "-o", out, "--images", tiny_dataset[1], "--force"]
    checkpoint = open(trained_checkpoint, "rb").read()
    rc, _, err = _run("torch_to_onnx.py", *args)
    assert rc == 0, err
    for sig, seconds in [(signal.SIGKILL, RNG.uniform(3, 9)), (signal.SIGINT, RNG.uniform(3, 9))]:
        _kill_after(_start("torch_to_onnx.py", *args), seconds, sig)
        onnx.checker.check_model(onnx.load(out))  # the earlier export or the new one, whole
        assert open(trained_checkpoint, "rb").read() == checkpoint
    (tmp_path / ".tmp-model.onnx.999999.1").write_bytes(b"what a killed export leaves")
    rc, _, err = _run("torch_to_onnx.py", *args)  # the next export goes ahead and clears that
    assert rc == 0, err[-2000:]
    _no_temporary_files(str(tmp_path))


@pytest.mark.slow
def test_two_runs_into_one_path_at_once(trained_checkpoint, tiny_dataset, tmp_path):
    out = str(tmp_path / "run")
    runs = {seed: _start("train.py", *_train_args(tiny_dataset, out, "-e", "3", "--seed", str(seed))) for seed in (1, 2)}
    results = {seed: _finish(process) for seed, process in runs.items()}
    assert sorted(rc for rc, _, _ in results.values()) == [0, 2], [err[-1500:] for _, _, err in results.values()]
    winner = next(seed for seed, (rc, _, _) in results.items() if rc == 0)
    rc, _, err = results[3 - winner]
    _one_line_or_none(rc, err)
    assert "in use by another command" in err or "already holds a training run" in err
    # the folder holds the one run that went ahead: its settings, its checkpoints, its curves only
    assert json.load(open(os.path.join(out, "args.json")))["seed"] == winner
    assert torch.load(os.path.join(out, "last.pth"), weights_only=True)["args"]["seed"] == winner
    assert len(os.listdir(os.path.join(out, "tensorboard"))) == 1

    evaluation = str(tmp_path / "eval")
    runs = [_start("eval.py", "-v", tiny_dataset[1], "-o", evaluation, "-c", trained_checkpoint, "--seed", str(s))
            for s in (3, 4)]
    for rc, _, err in [_finish(p) for p in runs]:
        assert rc in (0, 2), err[-1500:]
        _one_line_or_none(rc, err)
    assert _evaluation(evaluation) in (3, 4)

    export = str(tmp_path / "m.onnx")
    runs = [_start("torch_to_onnx.py", "-c", trained_checkpoint, "-o", export, "--images", tiny_dataset[1])
            for _ in range(2)]
    results = sorted([_finish(p) for p in runs], key=lambda r: r[0])
    assert [rc for rc, _, _ in results] == [0, 2]
    _one_line_or_none(2, results[1][2])


@contextlib.contextmanager
def _small_disk(path, size="64k"):
    os.makedirs(path)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_for_every_script(trained_checkpoint, tiny_dataset, tmp_path):
    with _small_disk(str(tmp_path / "disk")) as disk:
        checks = [("train.py", _train_args(tiny_dataset, os.path.join(disk, "run"), "-e", "1")),
                  ("eval.py", ["-v", tiny_dataset[1], "-o", os.path.join(disk, "eval"), "-c", trained_checkpoint]),
                  ("torch_to_onnx.py", ["-c", trained_checkpoint, "-o", os.path.join(disk, "m.onnx"),
                                        "--images", tiny_dataset[1]])]
        for script, args in checks:
            rc, _, err = _run(script, *args)
            assert rc == 2, (script, err[-2000:])
            _one_line_or_none(rc, err)
            assert "no space left on the device" in err, (script, err[-1000:])
            _no_temporary_files(disk)
        assert not os.path.exists(os.path.join(disk, "m.onnx"))
