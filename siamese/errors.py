"""User errors and the one place that turns them into a clear line and an exit code."""

import errno
import functools
import math
import os
import re
import sys

from .interrupts import inside_main, interrupted_line


class UserError(Exception):
    """A problem with the user's input: printed as one line, no traceback."""


def not_installed(error, name):
    """Whether the ModuleNotFoundError `error` says that the module `name` (or a package above it)
    is not installed: a module missing inside it is a broken install, not a missing one."""
    parts = name.split(".")
    return isinstance(error, ModuleNotFoundError) and error.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def import_optional(name, needed):
    """The optional module `name`, or a UserError `needed` (what to install) when it is not installed.
    Only the module missing says so: a Ctrl-C during its import (which a package may turn into an
    ImportError of its own) is a KeyboardInterrupt, and any other failed import says that it failed."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        if not_installed(error, name):
            raise UserError(needed) from None
        cause = error
        while cause is not None and not isinstance(cause, KeyboardInterrupt):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise KeyboardInterrupt from None
        raise UserError(f"{name} is installed but cannot be imported ({str(error).strip()[:200] or type(error).__name__}); "
                        f"install it again") from None


def check_at_least(value, minimum, name):
    """None (the default) or a number of at least minimum; anything else is the user's error."""
    if value is not None and value < minimum:
        raise UserError(f"{name} must be at least {minimum}, not {value}")
    return value


def check_finite(value, name):
    """None or a finite number; NaN and infinity are the user's error."""
    if value is not None and not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, not {value}")
    return value


def check_between(value, low, high, name):
    """None or a finite number in [low, high]."""
    check_finite(value, name)
    if value is not None and not low <= value <= high:
        raise UserError(f"{name} must be from {low} to {high}, not {value}")
    return value


def check_batch_size(batch_size, name="the batch size"):
    return check_at_least(batch_size, 1, name)


def usable_cpus():
    """The CPU cores this process may run on (its affinity, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


DEFAULT_WORKERS = 2


def default_workers():
    """The default of every --workers: 2, or the CPU cores this process may use if fewer (under
    taskset -c 0, or in a container of one core)."""
    return min(DEFAULT_WORKERS, usable_cpus())


def check_workers(workers, name="--workers"):
    """Loader processes: from 0 up to the usable CPU cores. More only compete for the same cores,
    and each holds its own copy of the dataset: thousands of them fill the memory before a batch."""
    check_at_least(workers, 0, name)
    if workers is not None and workers > usable_cpus():
        raise UserError(f"{name} {more_than_cores(workers)}")
    return workers


def more_than_cores(workers):
    """What a --workers above the usable cores is told, after the option's name (the command line's,
    or a file's key)."""
    cores = usable_cpus()
    return (f"must be at most the {cores} CPU core(s) this machine lets the command use, not {workers} (more "
            f"processes only compete for the same cores)")


# A UserError raised inside a DataLoader worker comes back with the worker's traceback
# folded into its message; the user only needs the last line.
_WORKER_LINE = re.compile(r"UserError: (.+)\s*$")


# What ends a line for a terminal or str.splitlines() besides a newline: a value the user gave that
# holds one (a carriage return, a form feed, a record separator) is shown escaped, not broken.
_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def user_message(error):
    """The error's one line: a worker's traceback reduced to its last line, and any other line
    break in it shown as its escape."""
    text = str(error).strip()
    if "\n" in text:
        found = _WORKER_LINE.search(text)
        text = found.group(1) if found else text.splitlines()[-1]
    return _LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], text)


# The hidden temporary names that files.py writes through (.tmp-NAME.PID, .tmp-NAME.PID.THREAD),
# and the out path each stands for.
_TEMPORARY = re.compile(r"^\.tmp-(.+?)(\.[0-9]+){1,2}$")


def shown_path(path):
    """path as the user knows it: each hidden temporary name in it replaced by the out path it is
    written for (a temporary is gone by the time its error is shown)."""
    parts = str(path).split("/")
    for i, part in enumerate(parts):
        while _TEMPORARY.match(part):
            part = _TEMPORARY.match(part).group(1)
        parts[i] = part
    return "/".join(parts)


def _close_progress_bars():
    """Close open tqdm bars, so that a message starts on a line of its own, not on a bar's."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def cli(main):
    """Decorate a script's main(argv): user errors print 'error: ...' and return 2; a full disk
    is one line too, and Ctrl-C says that what was written before is intact."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            with inside_main():
                return main(argv)
        except UserError as error:
            _close_progress_bars()
            print(f"error: {user_message(error)}", file=sys.stderr)
            return 2
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            _close_progress_bars()
            where = f" that holds '{shown_path(error.filename)}'" if error.filename else ""
            print(f"error: no space left on the device{where}; files written before are intact: free some space and "
                  f"run again", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            _close_progress_bars()
            print(interrupted_line(), file=sys.stderr)
            return 130

    return wrapper
