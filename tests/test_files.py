import os
import stat
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
