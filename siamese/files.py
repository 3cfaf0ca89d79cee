"""Writing outputs safely: a file appears whole or not at all, one command at a time writes
into an out path, an out path never replaces an input, and unusable folders or a full disk are
one line, not a traceback."""

import contextlib
import errno
import fcntl
import json
import math
import os
import shutil
import tempfile
import threading

from .errors import UserError, shown_path


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
def new_folder(path, *, what="output folder"):
    """prepare_output_dir(path) for a command that writes into it; when the command fails, the
    folders this created are removed again (with the unheld lock files in them, and only when
    nothing else was put there), so that a failed command leaves nothing new behind."""
    created, folder = [], os.path.abspath(path)
    while not os.path.lexists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    prepare_output_dir(path, what=what)
    try:
        yield path
    except BaseException:
        for folder in created:  # the deepest first
            if not _remove_empty(folder):
                break
        raise


def _remove_empty(folder):
    """Remove a folder that holds nothing but hidden lock files no command holds; whether it did."""
    try:
        names = os.listdir(folder)
        if not all(name.startswith(".") and name.endswith(".lock") for name in names):
            return False
        for name in names:
            with open(os.path.join(folder, name), "a") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a command: BlockingIOError
                os.remove(lock.name)
        os.rmdir(folder)
        return True
    except OSError:
        return False


def disk_error(error, path):
    """A UserError for an OSError met while writing path, or None when it is not about the disk."""
    path = shown_path(path)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"no space left on the device that holds '{path}'; nothing was replaced, files written "
                         f"before are intact: free some space and run again")
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return UserError(f"cannot write '{path}' ({error.strerror}); choose a writable path")
    return None


def same_path(a, b):
    """Whether two paths name one file (through links, or relative and absolute spellings)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def inside(path, folder):
    """Whether path is folder itself or lies below it (after resolving links)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_new_file(path, *, inputs=(), force=False, option="-o/--out"):
    """Refuse an out file that is one of the inputs (ever) or already exists (unless force)."""
    for given in inputs:
        if given and os.path.exists(given) and os.path.exists(path) and same_path(path, given):
            raise UserError(f"{option} '{path}' is the input '{given}'; writing there would destroy it: give another path")
    if os.path.isdir(path):
        raise UserError(f"{option} '{path}' is a folder; give a file name")
    if os.path.lexists(path) and not force:
        raise UserError(f"{option} '{path}' already exists; give another path, or --force to replace it")


def check_not_inside(out_path, folders, *, option="-o/--out"):
    """Refuse an out path inside a folder of images that is read: what is written there would be
    taken for images (or a class) by the next command that reads the folder."""
    for folder in folders:
        if folder and os.path.isdir(folder) and inside(out_path, folder):
            raise UserError(f"{option} '{out_path}' is inside the image folder '{folder}'; its files would become "
                            f"images of the next run over that folder: give a path outside it")


class OutputClaim:
    """An exclusive claim on an out path for the life of a command: an advisory lock (flock) on a
    hidden file, which the kernel drops when the process ends however it ends, so a killed run
    never leaves a path stuck. A second command claiming the same path is refused in one line.
    A command that ends with nothing written to `path` takes its lock file away again, and the
    folders it created for it (`created`: the outermost), so a failure leaves nothing behind."""

    def __init__(self, lock_path, what, *, path=None, created=None):
        self.lock_path, self.what = lock_path, what
        self.path, self.created = path, created
        self.handle = None

    def __enter__(self):
        if self.handle is not None:  # already claimed (claim_folder claims before it returns)
            return self
        try:
            self.handle = self._lock()
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.write(f"pid {os.getpid()}")
            self.handle.flush()
        except OSError as error:
            self._release()
            raise disk_error(error, self.path or self.lock_path) or error from None
        except BaseException:
            self._release()
            raise
        return self

    def _lock(self):
        """The lock file, open and locked by this process. Another command's is refused; one that a
        finishing command removed between its opening and its locking here is opened anew."""
        while True:
            handle = open(self.lock_path, "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise UserError(f"{self.what} is in use by another command ({holder}); wait for it to finish, or "
                                f"give another out path") from None
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(handle.fileno()), os.stat(self.lock_path)):
                    return handle
            handle.close()

    def _nothing_written(self):
        if self.path is None:
            return False
        lock_inside = os.path.dirname(self.lock_path) == os.path.abspath(self.path)
        try:
            return set(os.listdir(self.path)) <= {os.path.basename(self.lock_path)} if lock_inside else \
                not os.path.lexists(self.path)
        except OSError:
            return False

    def _release(self):
        if self._nothing_written():
            with contextlib.suppress(OSError):
                if self.handle is not None:
                    os.remove(self.lock_path)  # while it is locked: see _lock
                if self.created:
                    _remove_empty_folders(self.path, self.created)
        if self.handle is not None:
            with contextlib.suppress(OSError):  # a pid that a full disk kept in the buffer: not worth an error
                self.handle.close()  # closing drops the lock
            self.handle = None

    def __exit__(self, *exc):
        if self.handle is not None:
            self._release()
        return False


def _first_missing(path):
    """The outermost folder on the way to path that does not exist yet (None when path exists)."""
    path, missing = os.path.abspath(path), None
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path, missing = os.path.dirname(path), path
    return missing


def _remove_empty_folders(path, top):
    """Remove path and its parents up to top, each only if empty."""
    path, top = os.path.abspath(path), os.path.abspath(top)
    while True:
        os.rmdir(path)
        if path == top or not path.startswith(top):
            return
        path = os.path.dirname(path)


def claim_folder(path, *, what="output folder"):
    """Create the folder if needed and claim it (OutputClaim on path/.lock); the claim is held
    until its __exit__ (or the end of a `with` block). Temporary files of killed runs inside it
    are removed: no other command can be writing there now."""
    created = _first_missing(path)
    try:
        prepare_output_dir(path, what=what)
    except UserError:
        if created:
            with contextlib.suppress(OSError):
                _remove_empty_folders(path, created)
        raise
    claim = OutputClaim(os.path.join(path, ".lock"), f"{what} '{path}'", path=path, created=created).__enter__()
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith(".tmp-"):
                _remove(entry.path)
    return claim


def remove_killed_temporaries(path):
    """Remove the temporary files and folders that killed writers of path left beside it
    (`.tmp-NAME.*`, also nested as `.tmp-.tmp-NAME.*`). Only while path is claimed: no live writer can own them then."""
    parent, name = os.path.split(os.path.abspath(path))
    with os.scandir(parent) as entries:
        for entry in entries:
            stem = entry.name
            while stem.startswith(".tmp-"):
                stem = stem[len(".tmp-"):]
            if entry.name.startswith(".tmp-") and stem.startswith(name + ".") and not entry.is_symlink():  # files, folders
                _remove(entry.path)


def claim_beside(path, *, what="output"):
    """Claim an out path that is replaced as a whole (a file, or an evaluation's folder): the lock
    file stands beside it, hidden, so that it survives the replacement."""
    parent, name = os.path.split(os.path.abspath(path))
    return OutputClaim(os.path.join(parent, f".{name}.lock"), f"{what} '{path}'", path=path)


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
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(error, OSError) and disk_error(error, path):
            raise disk_error(error, path) from None
        raise


def sync_folder(path):
    """fsync a folder, so that the names renamed or created in it survive a power cut too (a file's
    own fsync keeps its data, not its name)."""
    handle = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _json_safe(value):
    """NaN and infinity are not JSON: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path, data):
    """Atomically write data as JSON that any reader accepts (no NaN or Infinity)."""
    with atomic_open(path, "w") as f:
        json.dump(_json_safe(data), f, indent=2, allow_nan=False)
        f.write("\n")


@contextlib.contextmanager
def temporary_beside(path):
    """A hidden temporary file name beside path, for a file that must be checked before it takes
    path's place; removed on the way out unless it was moved."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".tmp-{name[:120]}.{os.getpid()}.{threading.get_ident()}")
    try:
        yield tmp
    except OSError as error:
        if disk_error(error, path):
            raise disk_error(error, path) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


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
    except BaseException as error:
        _remove(staging)
        if isinstance(error, OSError) and disk_error(error, path):
            raise disk_error(error, path) from None
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
