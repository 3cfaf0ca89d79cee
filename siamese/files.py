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
    never a half-written one. On failure the earlier folder stays as it was."""
    parent, name = os.path.split(os.path.abspath(path))
    staging = os.path.join(parent, f".tmp-{name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run that had this process id
    os.mkdir(staging)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if os.path.lexists(path):
        earlier = os.path.join(parent, f".tmp-earlier-{name}.{os.getpid()}")
        os.rename(path, earlier)
        os.rename(staging, path)
        if os.path.isdir(earlier) and not os.path.islink(earlier):
            shutil.rmtree(earlier)
        else:
            os.remove(earlier)
    else:
        os.rename(staging, path)
