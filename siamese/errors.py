"""User errors and the one place that turns them into a clear line and an exit code."""

import functools
import re
import sys


class UserError(Exception):
    """A problem with the user's input: printed as one line, no traceback."""


def check_at_least(value, minimum, name):
    """None (the default) or a number of at least minimum; anything else is the user's error."""
    if value is not None and value < minimum:
        raise UserError(f"{name} must be at least {minimum}, not {value}")
    return value


def check_batch_size(batch_size, name="the batch size"):
    return check_at_least(batch_size, 1, name)


# A UserError raised inside a DataLoader worker comes back with the worker's traceback
# folded into its message; the user only needs the last line.
_WORKER_LINE = re.compile(r"UserError: (.+)\s*$")


def user_message(error):
    text = str(error).strip()
    if "\n" in text:
        found = _WORKER_LINE.search(text)
        text = found.group(1) if found else text.splitlines()[-1]
    return text


def cli(main):
    """Decorate a script's main(argv): user errors print 'error: ...' and return 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as error:
            print(f"error: {user_message(error)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
