"""Writing outputs safely: a file appears whole or not at all, and unusable folders are
reported before any work starts."""

import contextlib
import os
import tempfile

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


def _read_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


# Read once: os.umask can only be read by setting it, which is not safe while threads create files.
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_open(path, mode="w", *, durable=True, **kwargs):
    """Open a temporary file beside path; on success it replaces path in one rename, so the file
    is whole or absent even if the process is killed. durable=True also syncs the data to disk
    first, so a power cut cannot leave an empty file either; outputs that are cheap to write
    again (the pair pictures, thousands of them) skip that sync."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.chmod(tmp, 0o666 & ~_UMASK)  # the permissions of a normally created file, not mkstemp's 0600
    try:
        with os.fdopen(handle, mode, **kwargs) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
