"""A hostile user's processes and faults: loader workers by the hundred thousand, a main process
or a torchrun launcher killed with SIGKILL, a refused --resume under torchrun, crossval.py -o
inside its --data, and a full disk. Every process started here is killed by the end of its test."""

import contextlib
import fcntl
import glob
import os
import signal
import subprocess
import sys
import time

import pytest

import crossval
import eval as eval_script
import torch_to_onnx
import train
from conftest import ROOT, TINY_TRAIN_ARGS, make_folder
from siamese.errors import UserError, usable_cpus
from siamese.settings import EvaluationSettings, TrainingSettings
from test_faults import _small_disk

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _error_lines(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    return [line for line in err.splitlines() if line.startswith("error: ")]


def _alive(pid):
    """Whether pid runs (a zombie, dead but not yet collected by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


def _gone_within(pids, seconds):
    """The pids still running after waiting up to `seconds` for them to end."""
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _finish(process, timeout=300):
    """(stdout, stderr) of a process, killed with its children if it runs past timeout."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_all(_children(process.pid) + [process.pid])
        process.communicate(timeout=60)
        raise


def _kill_all(pids):
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# --- 10: --workers bounded by the machine; workers die with their parent -------------------------

# One more than the cores: the scripts are run here, and where the bound is missing, 100,000
# workers would fill the memory of the machine that runs the tests.
@pytest.mark.parametrize("script", ["train", "eval", "crossval"])
def test_more_workers_than_cores_are_refused_in_one_line(script, tiny_dataset, tmp_path, capsys):
    out, workers = str(tmp_path / "out"), str(usable_cpus() + 1)
    argv = {"train": lambda: train.main(["--train-path", tiny_dataset[0], "-o", out, "-e", "1", *TINY_TRAIN_ARGS,
                                         "--workers", workers]),
            "eval": lambda: eval_script.main(["-v", tiny_dataset[1], "-o", out, "-c", "x.pth", "--workers", workers]),
            "crossval": lambda: crossval.main(["--data", tiny_dataset[0], "-o", out, "--folds", "2", "-e", "1",
                                               *TINY_TRAIN_ARGS, "--workers", workers])}[script]
    assert argv() == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and f"--workers must be at most the {usable_cpus()} CPU core(s)" in lines[0], lines
    assert not os.path.exists(out)


def test_workers_up_to_the_cores_are_taken_and_no_more():
    cores = usable_cpus()
    assert TrainingSettings(workers=cores).workers == cores
    assert EvaluationSettings(val_path="v", out_path="o", workers=cores).workers == cores
    for workers in (cores + 1, 1000):  # above 1,024 the option's own bound refuses it
        with pytest.raises(UserError, match=f"--workers must be at most the {cores} CPU core.*, not {workers} "):
            TrainingSettings(workers=workers)
        with pytest.raises(UserError, match=f"--workers must be at most the {cores} CPU core.*, not {workers} "):
            EvaluationSettings(val_path="v", out_path="o", workers=workers)


LOADER = """
import sys, time
sys.path.insert(0, %r)
from torch.utils.data import DataLoader
from siamese.data import loader_options
batches = iter(DataLoader(list(range(1000)), batch_size=1, **loader_options(workers=2, device="cpu")))
next(batches)
print(" ".join(str(w.pid) for w in batches._workers), flush=True)
time.sleep(300)
"""


@pytest.mark.slow
def test_loader_workers_die_with_a_killed_main_process():
    """PyTorch's workers notice a dead parent only when they next look (up to 5 s idle, never while
    starting); the kernel kills them at once."""
    main = subprocess.Popen([sys.executable, "-c", LOADER % ROOT], stdout=subprocess.PIPE, text=True, env=ENV)
    workers = []
    try:
        workers = [int(pid) for pid in main.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        main.kill()
        main.wait(timeout=30)
        assert _gone_within(workers, 1.5) == []
    finally:
        main.kill()
        main.wait(timeout=30)
        _kill_all(workers)


# --- 11 and 20: torchrun ----------------------------------------------------------------------------

def _torchrun(tiny_dataset, out, *extra, **popen):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             *popen.pop("torchrun", ()), os.path.join(ROOT, "train.py"), "--train-path",
                             tiny_dataset[0], "--val-path", tiny_dataset[1], "-o", out, *TINY_TRAIN_ARGS, *extra],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow
def test_torchrun_processes_stop_when_the_launcher_is_killed(tiny_dataset, tmp_path):
    out = str(tmp_path / "run")
    launcher = _torchrun(tiny_dataset, out, "-e", "10000", "--workers", "1", start_new_session=True)
    ranks, workers = [], []
    try:
        deadline = time.monotonic() + 240
        while not os.path.exists(os.path.join(out, "args.json")) and time.monotonic() < deadline:
            assert launcher.poll() is None, launcher.communicate(timeout=60)[1][-3000:]
            time.sleep(0.2)
        time.sleep(3)  # both training, each with its loader worker
        ranks = _children(launcher.pid)
        workers = [w for rank in ranks for w in _children(rank)]
        assert len(ranks) == 2 and len(workers) >= 2, (ranks, workers)
        os.killpg(launcher.pid, signal.SIGKILL)  # the launcher's whole process group, as a scheduler would
        assert _gone_within(ranks + workers, 10) == []
    finally:
        with contextlib.suppress(OSError):
            os.killpg(launcher.pid, signal.SIGKILL)
        _kill_all(ranks + workers)  # first: they hold the launcher's pipes open
        launcher.communicate(timeout=60)


@pytest.mark.slow
def test_torchrun_refuses_on_every_rank_in_one_line_and_reports_once(tiny_dataset, tmp_path):
    out = str(tmp_path / "run")
    assert train.main(["--train-path", tiny_dataset[0], "--val-path", tiny_dataset[1], "-o", out, "-e", "1",
                       *TINY_TRAIN_ARGS]) == 0
    resume = ["-e", "2", "--resume", os.path.join(out, "last.pth")]

    logs = str(tmp_path / "logs")
    with open(os.path.join(out, ".lock"), "a+") as lock:  # another command training into it meanwhile
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = _torchrun(tiny_dataset, out, *resume, torchrun=("--log-dir", logs, "--redirects", "3"))
        _finish(refused)
    assert refused.returncode != 0
    per_rank = sorted(glob.glob(os.path.join(logs, "**", "stderr.log"), recursive=True))
    assert len(per_rank) == 2, per_rank
    for path in per_rank:
        err = open(path).read()
        assert "Traceback" not in err, err[-3000:]
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and "in use by another command" in lines[0], err[-3000:]

    resumed = _torchrun(tiny_dataset, out, *resume)  # once the other command has finished
    stdout, stderr = _finish(resumed)
    assert resumed.returncode == 0, stderr[-3000:]
    assert stdout.count("best validation AUC") == 1, stdout  # the main process's, not another's stale one


# --- 15: crossval.py -o inside --data ---------------------------------------------------------------

def test_crossval_out_inside_its_data_is_refused_before_writing(tiny_folder, capsys):
    before = sorted(os.listdir(tiny_folder))
    out = os.path.join(tiny_folder, "cv")
    assert crossval.main(["--data", tiny_folder, "-o", out, "--folds", "2", *TINY_TRAIN_ARGS]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and f"-o/--out '{out}' is inside the image folder" in lines[0], lines
    assert sorted(os.listdir(tiny_folder)) == before  # no plan.json, no lock, no cv/


# --- 16: a full disk ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_full_disk_names_the_out_path_and_leaves_nothing_behind(trained_checkpoint, tiny_dataset, tmp_path, capsys):
    with _small_disk(str(tmp_path / "disk")) as disk:
        def commands():
            return [(os.path.join(disk, "run", "deeper"), lambda out: train.main(
                        ["--train-path", tiny_dataset[0], "--val-path", tiny_dataset[1], "-o", out, "-e", "1",
                         *TINY_TRAIN_ARGS])),
                    (os.path.join(disk, "cv"), lambda out: crossval.main(
                        ["--data", tiny_dataset[0], "-o", out, "--folds", "2", "-e", "1", *TINY_TRAIN_ARGS])),
                    (os.path.join(disk, "eval"), lambda out: eval_script.main(
                        ["-v", tiny_dataset[1], "-o", out, "-c", trained_checkpoint])),
                    (os.path.join(disk, "m.onnx"), lambda out: torch_to_onnx.main(
                        ["-c", trained_checkpoint, "-o", out, "--images", tiny_dataset[1]]))]

        with open(os.path.join(disk, "filler"), "wb", buffering=0) as filler:  # full to the last byte
            with contextlib.suppress(OSError):
                while True:
                    filler.write(b"\0" * 4096)
        for out, command in commands():
            assert command(out) == 2, out
            lines = _error_lines(capsys)
            assert len(lines) == 1 and f"no space left on the device that holds '{out}'" in lines[0], lines
            assert os.listdir(disk) == ["filler"]  # no lock file, no empty folder
        os.remove(os.path.join(disk, "filler"))
        for out, command in commands()[2:]:  # room to start, not to finish
            assert command(out) == 2, out
            lines = _error_lines(capsys)
            assert len(lines) == 1 and f"no space left on the device that holds '{out}" in lines[0], lines
            assert ".tmp-" not in lines[0]  # the temporary is gone: the path written is named
            assert os.listdir(disk) == []


@pytest.mark.slow
def test_a_setting_a_resumed_run_does_not_use_is_named(tiny_dataset, tmp_path, capsys):
    """--resume keeps the run's own network and optimiser state: a --learning-rate given now is
    not used, and the run says so instead of ignoring it silently."""
    import train
    from conftest import TINY_TRAIN_ARGS

    train_dir, val_dir = tiny_dataset
    common = ["--train-path", train_dir, "--val-path", val_dir, "-o", str(tmp_path / "run"), *TINY_TRAIN_ARGS]
    assert train.main([*common, "-e", "1"]) == 0
    capsys.readouterr()
    assert train.main([*common, "-e", "2", "-lr", "0.01",
                       "--resume", str(tmp_path / "run" / "last.pth")]) == 0
    out = capsys.readouterr().out
    assert "note: --learning-rate 0.01 is not used: the resumed run keeps its own 0.001" in out
    assert "--image-size" not in out  # unchanged settings are not named


# --- --resume continues its own run, with its own optimiser, or says why not -----------------------


def _copy_of_run(trained_checkpoint, tmp_path):
    """A copy of the shared trained run (2 epochs, seed 3): its checkpoints, args.json and logs."""
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(os.path.dirname(trained_checkpoint), run,
                    ignore=lambda folder, names: [n for n in names if n.startswith(".") or n.endswith((".onnx", ".data"))])
    return run


def _resume(tiny_dataset, run, *extra):
    train_dir, val_dir = tiny_dataset
    return train.main(["--train-path", train_dir, "--val-path", val_dir, "-o", run, "-e", "3", "--seed", "3",
                       *TINY_TRAIN_ARGS, "--resume", os.path.join(run, "last.pth"), *extra])


def test_resuming_a_checkpoint_of_another_run_under_last_pth_is_refused(trained_checkpoint, tiny_dataset, tmp_path,
                                                                      capsys):
    """cp other/last.pth run/last.pth, then --resume run/last.pth: the run the folder records is
    not the checkpoint's; continuing would mix the two and rewrite the folder's run_id."""
    import json

    import torch

    run = _copy_of_run(trained_checkpoint, tmp_path)
    last = os.path.join(run, "last.pth")
    state = torch.load(last, weights_only=True)
    own, state["run_id"] = state["run_id"], "f" * 32  # as another run's last.pth copied over it
    torch.save(state, last)
    capsys.readouterr()
    assert _resume(tiny_dataset, run) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and f"'{last}' belongs to run {'f' * 32}" in lines[0], lines
    assert f"records run {own}" in lines[0] and "new folder (another -o/--out)" in lines[0]
    with open(os.path.join(run, "args.json")) as f:
        assert json.load(f)["run_id"] == own


@pytest.mark.parametrize("removed", [("optimizer",), ("scheduler",)])
def test_resuming_without_the_optimiser_state_is_refused(trained_checkpoint, tiny_dataset, tmp_path, capsys, removed):
    """Adam's moments and the schedule would restart silently: refused, naming what is missing and
    the option that accepts it."""
    import torch

    run = _copy_of_run(trained_checkpoint, tmp_path)
    last = os.path.join(run, "last.pth")
    state = torch.load(last, weights_only=True)
    state.update(dict.fromkeys(removed))
    torch.save(state, last)
    before = sorted(os.listdir(run))
    capsys.readouterr()
    assert _resume(tiny_dataset, run) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and f"'{last}' holds no {' and '.join(removed)} state" in lines[0], lines
    assert "--fresh-optimizer" in lines[0] and sorted(os.listdir(run)) == before
    assert torch.load(os.path.join(run, "best.pth"), weights_only=True)["optimizer"]  # best.pth kept its own


@pytest.mark.slow
def test_fresh_optimizer_resumes_with_a_warning(trained_checkpoint, tiny_dataset, tmp_path, capsys):
    import torch

    run = _copy_of_run(trained_checkpoint, tmp_path)
    last = os.path.join(run, "last.pth")
    state = torch.load(last, weights_only=True)
    state["optimizer"] = None
    torch.save(state, last)
    capsys.readouterr()
    assert _resume(tiny_dataset, run, "--fresh-optimizer") == 0
    out = capsys.readouterr().out
    assert f"warning: '{last}' holds no optimizer state: --fresh-optimizer continues at epoch 3" in out
    resumed = torch.load(last, weights_only=True)
    assert resumed["epoch"] == 3 and resumed["optimizer"] and resumed["run_id"] == state["run_id"]
    assert os.stat(last).st_nlink == 1  # a file of its own, whichever other names epoch 3 wrote


# --- -o beside several image folders: each folder is checked, not their common parent ---------------

def _two_folders(base):
    first = make_folder(os.path.join(base, "a"), classes=2, seed=1)
    second = make_folder(os.path.join(base, "b"), classes=2, seed=2)
    for name in os.listdir(second):  # classes of their own: the two folders train together
        os.rename(os.path.join(second, name), os.path.join(second, "other_" + name))
    return first, second


def test_train_out_beside_its_training_folders_is_taken_and_inside_one_refused(tmp_path, capsys):
    first, second = _two_folders(str(tmp_path / "data"))
    inside = os.path.join(second, "runs")
    assert train.main(["--train-path", first, second, "-o", inside, "-e", "1", *TINY_TRAIN_ARGS]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and f"is inside the image folder '{second}'" in lines[0], lines
    out = str(tmp_path / "data" / "runs" / "x")  # under their common parent, in neither
    assert train.main(["--train-path", first, second, "-o", out, "-e", "1", *TINY_TRAIN_ARGS]) == 0
    assert os.path.isfile(os.path.join(out, "last.pth"))


@pytest.mark.slow
def test_crossval_out_beside_its_data_folders_is_taken(tmp_path, capsys):
    first, second = _two_folders(str(tmp_path / "data"))
    out = str(tmp_path / "data" / "cv")
    assert crossval.main(["--data", first, second, "-o", out, "--folds", "2", "-e", "1", *TINY_TRAIN_ARGS]) == 0
    assert not _error_lines(capsys)
