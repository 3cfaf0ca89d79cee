"""Writing outputs safely: a file appears whole or not at all, and unusable folders are
reported before any work starts."""

import contextlib
import os
import shutil
import tempfile
import threading

from .errors import UserError


def prepare_output_dir(path, *, what="output folder"):
    """Create the folder if needed and prove that it can be written to."""
    if not path:
        raise UserError(f"no {what} given")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} '{path}' is a file, not a folder; choose another path")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UserError(f"cannot write to {what} '{path}' ({error.strerror or error}); choose a writable path") from None
    return path


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """Open a temporary file beside path; on success its data is synced to disk and it replaces
    path in one rename, so the file is whole or absent even after a kill or a power cut."""
    directory, name = os.path.split(os.path.abspath(path))
    # Named after the file, the process and the thread, so concurrent writers never share one,
    # and created as open() creates files, so the umask sets its permissions as usual.
    tmp = os.path.join(directory, f".tmp-{name[:120]}.{os.getpid()}.{threading.get_ident()}")
    handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(handle, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path):
    """Yield a hidden folder beside path to fill with plain writes; on success it replaces path as
    a whole, so the folder holds this run's files only (none left over from an earlier run) and
    never a half-written one. On failure the earlier folder stays as it was; what a killed run
    left beside it is removed by the next run."""
    parent, name = os.path.split(os.path.abspath(path))
    _remove_left_behind(parent, (f".tmp-{name}.", f".tmp-earlier-{name}."))
    staging = os.path.join(parent, f".tmp-{name}.{os.getpid()}")
    os.mkdir(staging)
    try:
        yield staging
    except BaseException:
        _remove(staging)
        raise
    if os.path.lexists(path):
        earlier = os.path.join(parent, f".tmp-earlier-{name}.{os.getpid()}")
        os.rename(path, earlier)
        os.rename(staging, path)
        _remove(earlier)
    else:
        os.rename(staging, path)


def _remove_left_behind(parent, prefixes):
    """Remove the hidden folders of runs that were killed (their process is gone, or is this one)."""
    with os.scandir(parent) as entries:
        for entry in entries:
            pid = entry.name.rsplit(".", 1)[-1]
            if entry.name.startswith(prefixes) and pid.isdigit() and not _running_elsewhere(int(pid)):
                _remove(entry.path)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


def _running_elsewhere(pid):
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
