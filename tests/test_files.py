import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import threading

import pytest

from siamese.files import atomic_open


def test_atomic_files_get_the_permissions_the_umask_gives(tmp_path):
    previous = os.umask(0o027)
    try:
        with atomic_open(str(tmp_path / "metrics.json"), "w") as f:
            f.write("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "metrics.json").st_mode) == 0o640
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_threads_writing_the_same_file_never_share_a_temporary_file(tmp_path):
    path = str(tmp_path / "scores.csv")
    barrier = threading.Barrier(4)
    errors = []

    def write(k):
        try:
            with atomic_open(path, "w") as f:
                f.write(str(k) * 1000)
                barrier.wait()  # all four temporary files are open at once
        except Exception as error:  # a shared temporary file: the later renames find it gone
            errors.append(error)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    text = (tmp_path / "scores.csv").read_text()
    assert len(set(text)) == 1 and len(text) == 1000  # one writer's whole file, not a mix
    assert os.listdir(tmp_path) == ["scores.csv"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    (tmp_path / "roc.png").write_bytes(b"earlier")
    with pytest.raises(RuntimeError):
        with atomic_open(str(tmp_path / "roc.png"), "wb") as f:
            f.write(b"half")
            raise RuntimeError("drawing failed")
    assert (tmp_path / "roc.png").read_bytes() == b"earlier"
    assert os.listdir(tmp_path) == ["roc.png"]


# --- lock files: gone when a command ends, still one command at a time ------------------------------

def _lock_files(*folders):
    return [os.path.join(p, n) for folder in folders for p, _, names in os.walk(folder) for n in names
            if n.endswith(".lock")]


def test_no_lock_file_is_left_after_a_successful_command(trained_checkpoint, onnx_model, tiny_dataset, tmp_path):
    import eval as eval_script
    import identify

    run = os.path.dirname(trained_checkpoint)  # trained, then exported into, by the fixtures
    assert eval_script.main(["-v", tiny_dataset[1], "-c", trained_checkpoint, "-o", str(tmp_path / "eval")]) == 0
    assert identify.main(["--gallery", tiny_dataset[1], "--query", tiny_dataset[1], "-m", onnx_model,
                          "-o", str(tmp_path / "identified")]) == 0
    assert _lock_files(run, str(tmp_path)) == []


def test_a_killed_commands_lock_file_is_taken_and_removed_by_the_next(tmp_path):
    from siamese.files import claim_beside

    out = str(tmp_path / "model.onnx")
    code = ("import os, signal, sys; sys.path.insert(0, %r)\n"
            "from siamese.files import claim_beside\n"
            "claim_beside(%r).__enter__()\n"
            "os.kill(os.getpid(), signal.SIGKILL)" % (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), out))
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    assert os.listdir(tmp_path) == [".model.onnx.lock"]  # kill -9: nothing could clean up
    with claim_beside(out):
        with open(out, "w") as f:
            f.write("exported")
    assert os.listdir(tmp_path) == ["model.onnx"]


def _claim_many_times(path, marker, times, failures):
    """Claim path `times` times, retrying while another process holds it; while holding it, hold
    `marker` too (created exclusively: a second holder at once fails to)."""
    from siamese.errors import UserError
    from siamese.files import claim_beside

    done = 0
    while done < times:
        try:
            with claim_beside(path):
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    failures.put("two holders at once")
                    return
                os.close(fd)
                os.remove(marker)
            done += 1
        except UserError:
            pass


def test_removing_lock_files_keeps_one_holder_at_a_time(tmp_path):
    """Each holder removes its lock file before it unlocks it, while other processes open, wait on
    and lock the same path: never two holders at once."""
    context = multiprocessing.get_context("fork")
    failures = context.Queue()
    path, marker = str(tmp_path / "out"), str(tmp_path / "held")
    workers = [context.Process(target=_claim_many_times, args=(path, marker, 200, failures)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * 4
    assert failures.empty()
    assert os.listdir(tmp_path) == []
