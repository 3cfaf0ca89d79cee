"""Ctrl-C in a script of the toolkit run as a program: one line and exit 130 at any moment, its
imports and its exit included. The package installs this first thing when imported (a script's
first import is of the package), so this module imports nothing that is not loaded already."""

import _signal
import os
import sys

INTERRUPTED = "interrupted; files written before are intact"
_HOW_TO_GO_ON = {"train.py": " (the run continues with --resume)", "crossval.py": " (the same command continues it)"}


def interrupted_line():
    """The one line of a Ctrl-C, with how to go on for the scripts that can."""
    script = getattr(sys.modules.get("__main__"), "__file__", None) or ""
    return INTERRUPTED + _HOW_TO_GO_ON.get(os.path.basename(script), "")
_TOOLKIT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_state = {"mains": 0, "pid": None}  # scripts' main functions running now (demo.py runs others in its own)


def _interrupted(signum, frame):
    """Inside a script's main: KeyboardInterrupt, which cleans up on its way to cli's one line.
    Before main (the imports) or after it (the interpreter's exit), nothing of the command is under
    way: the same line, and exit 130 at once."""
    if _state["mains"] or os.getpid() != _state["pid"]:  # or a child process forked from this one
        raise KeyboardInterrupt
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: the line below is written around it
            pass
    os.write(2, f"{interrupted_line()}\n".encode())
    os._exit(130)


def install():
    """Take SIGINT over when the program is a script of the toolkit; in any other program (tests, a
    user's own code) do nothing."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if not script or os.path.dirname(os.path.abspath(script)) != _TOOLKIT or main.__name__ != "__main__":
        return  # not a script of the toolkit, or a process that multiprocessing spawned from one (__mp_main__)
    try:
        if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:  # an ignored SIGINT stays ignored
            _state["pid"] = os.getpid()
            _signal.signal(_signal.SIGINT, _interrupted)
    except ValueError:  # not the main thread: signals are not this thread's to handle
        pass


class inside_main:
    """Around a script's main: a Ctrl-C there is a KeyboardInterrupt (see _interrupted)."""

    def __enter__(self):
        _state["mains"] += 1

    def __exit__(self, *exc):
        _state["mains"] -= 1
        return False
