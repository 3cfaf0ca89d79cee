"""The scripts' command lines: one help layout (the whole docstring with its examples, each
option by its canonical kebab-case spelling with its default), the option groups that several
scripts share, so that no script imports another, and the types of every number option. No
torch here.

Older spellings (--out_path, --train_path, -lr, --engine for a model file) keep working as
hidden aliases: they parse, and --help shows only the canonical name. One option given under two
spellings is refused, and every argparse complaint is one UserError line (exit 2).
"""

import argparse
import math
import re
import sys
from dataclasses import dataclass

from .errors import UserError, more_than_cores, usable_cpus

HIDDEN_ALIASES = {"--out-path", "--engine", "-lr"}


def shown_spellings(action):
    """The spellings --help shows: no underscore spelling, no hidden alias."""
    shown = [s for s in action.option_strings if "_" not in s and s not in HIDDEN_ALIASES]
    return shown or action.option_strings[:1]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written (examples keep their lines); options without their aliases;
    '(default: X)' added where the help does not already speak of the default."""

    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        shown = shown_spellings(action)
        if action.nargs == 0:
            return ", ".join(shown)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(shown[:-1] + [f"{shown[-1]} {metavar}"])

    def _get_help_string(self, action):
        return help_text(action)


def help_text(action):
    """An option's help as --help and docs/options.md show it: '(default: X)' added where the help
    does not already speak of the default, and a number's range (its declared bounds)."""
    text = action.help or ""
    bounds = bounds_of(action.type)
    if ("default" in text.lower() or action.default in (None, False, argparse.SUPPRESS)
            or not action.option_strings):
        return f"{text} ({bounds})" if bounds else text
    return text + (f" (default: %(default)s; {bounds})" if bounds else " (default: %(default)s)")


class ScriptParser(argparse.ArgumentParser):
    """An ArgumentParser whose complaints are UserErrors (one line, exit 2 through errors.cli,
    before anything runs), naming each option as --help does; and which refuses one option given
    under two spellings (--train_path a --train-path b; -lr 0.5 --learning-rate 0.001), where the
    last would silently win. The same spelling twice keeps argparse's rule: the last value wins,
    and an option of several values (--train-path, --data) adds them up; so do an option and its
    opposite (--amp --no-amp, --augment full --no-augment), which are values, not spellings."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        self._refuse_two_spellings(args)
        return super().parse_known_args(args, namespace)

    def _refuse_two_spellings(self, args):
        given = {}
        for arg in args:
            if arg == "--":
                break
            # argparse's own reading of the word (abbreviations, --x=v, -e5); a tuple, or a list of
            # them on newer Pythons
            found = self._parse_optional(arg) if arg[:1] in self.prefix_chars else None
            for action, spelling, *_ in (found if isinstance(found, list) else [found] if found else []):
                if action is not None:
                    negated = isinstance(action, argparse.BooleanOptionalAction) and spelling.startswith("--no-")
                    spellings = given.setdefault((action, negated), [])
                    spellings += [spelling] if spelling not in spellings else []
        for first, second, *_ in (s for s in given.values() if len(s) > 1):
            self.error(f"{first} and {second} set the same option; give only one of them")

    def _get_option_tuples(self, option_string):
        """The options an abbreviation matches, one spelling each (the one --help shows): the
        spellings of one option are that option (--learn: --learning-rate, not ambiguous with the
        older --learning_rate), and an abbreviation of several options names their visible spellings."""
        found = {}
        for match in super()._get_option_tuples(option_string):  # (action, spelling, ...)
            earlier = found.get(match[0])
            if earlier is None or (earlier[1] not in shown_spellings(match[0]) and match[1] in shown_spellings(match[0])):
                found[match[0]] = match
        return list(found.values())

    def error(self, message):
        """argparse's complaint as one UserError line: '--seed must be ...', not 'argument --seed: must be ...'."""
        for action in self._actions:
            if len(action.option_strings) > 1:  # argparse names an option by all its spellings
                message = message.replace("/".join(action.option_strings), "/".join(shown_spellings(action)))
        raise UserError(re.sub(r"^argument (\S+): (must be|is) ", r"\1 \2 ", message))


def script_parser(doc):
    """The parser of every script: --help shows the script's whole docstring."""
    return ScriptParser(description=doc, formatter_class=HelpFormatter)


def add_out_option(p, help, **kwargs):
    """-o/--out, the one spelling of every script's out path (dest out_path)."""
    p.add_argument("-o", "--out", "--out-path", "--out_path", dest="out_path", metavar="PATH", type=str, help=help,
                   **kwargs)


CHANNELS_LAST_HELP = "channels_last memory format (default: on GPUs, where it is faster; off on CPUs)"


def add_pytorch_options(p, device_help="auto, cpu, cuda or cuda:N"):
    """--device, --amp, --channels-last, --compile, --tf32 of a script that runs a checkpoint on
    PyTorch (predict.TorchPredictor's parameters; train.py has the same from its settings)."""
    p.add_argument("--device", default="auto", type=str, help=device_help)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="mixed precision: bfloat16 on CPUs and on GPUs of compute capability 8.0 (Ampere) and newer, "
                        "float16 on older GPUs")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help=CHANNELS_LAST_HELP)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the embedder (pays off on many images; the compile time is printed)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="on GPUs of compute capability 8.0 and newer, float32 convolutions and matrix products use TF32 "
                        "tensor cores (--no-tf32: full float32)")


def add_model_option(p, help="a deployed model: .onnx file (ONNX Runtime) or TensorRT engine (with ENGINE.json "
                             "beside it)", **kwargs):
    """-m/--model, a deployed model file (dest engine; --engine is its older spelling)."""
    p.add_argument("-m", "--model", "--engine", dest="engine", metavar="MODEL", type=str, help=help, **kwargs)


class Several(argparse.Action):
    """An option of several values (nargs '+') that adds them up when given again (--train-path a
    --train-path b: both); given at all, it replaces its default (the folders of a --config)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        earlier = getattr(namespace, self.dest, None)
        kept = [] if earlier is None or earlier is self.default else list(earlier)
        setattr(namespace, self.dest, kept + list(values))


def folder_path(text):
    """The type of an option that names a folder of images: an empty path is refused (it would
    read the current folder), on the command line and in a recorded run's args.json alike."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must be a folder's path, not {text!r}")
    return text


TEXT_TYPES = (None, str, folder_path)  # the types of the options that take text; every other takes a number


_WHOLE = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)
_NONZERO_DIGIT = re.compile(r"[1-9]")


class _RoundsToZero(ValueError):
    """A float written not zero that reads as 0 (1e-400): it would turn an option off."""


def _read_number(text, kind):
    """A number written in ASCII digits, or None: Python's int() and float() also read other
    scripts' digits and '1_0'. Raises _RoundsToZero for a float that is not zero but reads as 0."""
    text = text.strip()
    if not (_WHOLE if kind is int else _DECIMAL).fullmatch(text):
        return None
    try:
        value = kind(text)
    except ValueError:  # more digits than int() reads
        return None
    if value == 0 and kind is float and _NONZERO_DIGIT.search(text.lower().split("e")[0]):
        raise _RoundsToZero(text)
    return value


def _with_unit(bound, unit):
    return f"{bound}{'' if not unit else f' {unit}' if bound == 1 else f' {unit}s'}"


@dataclass(frozen=True)
class Number:
    """The type of a number option, the one check of its value: argparse's type= on the command
    line (a bad value is one line before anything runs), and the same object for a value from a
    file (args.json) or from code. A whole (int) or a finite (float) number from `low` (excluded
    with `above`) to `high` (excluded with `below`): every number has an upper bound, declared
    here, shown by --help and docs/options.md, so that a mistyped 99999999999999999999 is refused
    before it allocates or loops. `off` is a value that turns the option off (accepted, and named
    as such), `word` a word taken besides numbers ('all', 'auto'), `noun` what the message calls
    the value ('--dropout is a probability from ...'), `unit` what the bounds count."""

    kind: type
    low: float
    high: float
    above: bool = False
    below: bool = False
    off: float | None = None
    word: str | None = None
    noun: str | None = None
    unit: str | None = None

    def __post_init__(self):
        if self.kind not in (int, float) or self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a Number needs int or float and bounds low < high, not {self}")

    def _span(self):
        """'between 1 and 100000', 'from 0 (off) up to, not including, 1'."""
        low = f"{_with_unit(self.low, self.unit)}{' (off)' if self.off == self.low else ''}"
        high = _with_unit(self.high, self.unit)
        if self.below:
            text = f"{'above' if self.above else 'from'} {low} up to, not including, {high}"
        else:
            text = f"above {low}, up to {high}" if self.above else f"between {low} and {high}"
        return text if self.off is None or self.off == self.low else f"{self.off} (off) or {text}"

    def _passed(self, value):
        """The bound a number out of range passes: 'at least 1', 'at most 65536'."""
        if value < self.low or (value == self.low and self.above):
            text = f"{'above' if self.above else 'at least'} {_with_unit(self.low, self.unit)}"
            text += " (off)" if self.off == self.low else ""
        else:
            text = f"{'below' if self.below else 'at most'} {_with_unit(self.high, self.unit)}"
        return text if self.off is None or self.off == self.low else f"{self.off} (off) or {text}"

    def bounds(self):
        """What the option takes, in words, as --help and docs/options.md show it."""
        return f"'{self.word}' or {self._span()}" if self.word else self._span()

    def refusal(self, value, shown=None):
        """'must be at least 1, not 0', 'must be at most 65536, not 99999999999999999999': the bound
        a number passes (a named kind of number, such as a probability, by its whole range), or
        what the option takes, for what is not a number."""
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        shown = shown if shown is not None else value
        if self.noun:
            what = f"{self.noun} {self._span()}"
        elif number:
            what = self._passed(value)
        else:
            what = f"{'a whole number' if self.kind is int else 'a finite number'} {self._span()}"
        what = f"'{self.word}' or {what}" if self.word else what
        return f"{'is' if self.noun else 'must be'} {what}, not {shown if number else repr(str(shown))}"

    def fits(self, value):
        if value is None or (self.word is not None and value == self.word):
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if value == self.off:
            return True
        low_fits = value > self.low or (value == self.low and not self.above)
        return low_fits and (value < self.high or (value == self.high and not self.below))

    def check(self, value, name):
        """The value (None: not given), or a UserError naming the option."""
        if not self.fits(value):
            raise UserError(f"{name} {self.refusal(value)}")
        return value

    def __call__(self, text):
        if self.word is not None and text == self.word:
            return text
        try:
            value = _read_number(text, self.kind)
        except _RoundsToZero:
            raise argparse.ArgumentTypeError(self.refusal(None, text) + " (it is too small: it rounds to 0)") from None
        if value is None:
            raise argparse.ArgumentTypeError(self.refusal(None, text))
        if not self.fits(value):
            raise argparse.ArgumentTypeError(self.refusal(value, text))
        return value


def bounds_of(kind):
    """What an option's type accepts, in words, for --help and docs/options.md (None: not a number)."""
    return kind.bounds() if callable(getattr(kind, "bounds", None)) else None


def whole(low, high, **kwargs):
    """A whole number from `low` to `high` (a count, a size, a batch)."""
    return Number(int, low, high, **kwargs)


# The upper bounds of counts and sizes: far above any real use, and low enough that a command
# given the bound itself starts work it can finish (the size of the result, the loops and the
# memory are bounded by them together with the data).
MAX_IMAGE_SIZE = 8192  # pixels: what a checkpoint and a deployed model may record (checkpoint.py, contract.py)
MAX_BATCH = 65_536  # images or pairs in one batch
MAX_EPOCHS = 100_000
MAX_PAIRS_PER_IMAGE = 1_000  # pairs drawn per image (an image has at most as many partners as images)
MAX_TRIALS = 100_000  # one-shot trials
MAX_CLASSES = 1_000_000
MAX_IMAGES = 1_000_000  # pictures written, images calibrated or checked, a shortlist
MAX_WORKERS = 1_024  # loader processes or threads (also at most the CPU cores the process may use)

SEED = Number(int, 0, 2**32 - 1)  # every seed of every script: numpy's and torch's generators take it
PROBABILITY = Number(float, 0, 1)  # thresholds, --erase, --max-auc-drop
OFF_OR_FRACTION = Number(float, 0, 1, below=True, off=0)  # a decay or margin below 1; 0: off
FAR = Number(float, 0, 1, below=True, off=0, noun="a false accept rate")  # --threshold-at-far, in every script
IMAGE_SIZE = whole(1, MAX_IMAGE_SIZE, unit="pixel")
BATCH = whole(1, MAX_BATCH)  # images per batch when embedding, in every script
EPOCHS = whole(1, MAX_EPOCHS)
TRIALS = whole(1, MAX_TRIALS)
class _Workers(Number):
    """Loader processes or threads: also at most the CPU cores this process may use, read where the
    option is read (the command line, or a recorded run's args.json), as errors.check_workers
    holds a value from code."""

    def __call__(self, text):
        value = super().__call__(text)
        if value > usable_cpus():
            raise argparse.ArgumentTypeError(more_than_cores(value))
        return value


WORKERS = _Workers(int, 0, MAX_WORKERS)
PICTURES = whole(0, MAX_IMAGES)
TOP_K = whole(1, 1_000)  # classes listed per query (identify.py, serve.py)
SHORTLIST = Number(int, 0, MAX_IMAGES, word="auto")  # gallery images FAISS proposes to the head
# The oldest opset torch.onnx's exporter implements: it exports 18 and converts to the others,
# down with a warning and often not at all (resnet18 failed at 7, 9 and 13; export.py refuses it).
MIN_OPSET = 18


class _Opset:
    """--opset: from MIN_OPSET to the newest opset the installed onnx package knows (read when a
    value is given: importing onnx is slow)."""

    def bounds(self):
        return f"between {MIN_OPSET} and the newest opset of the installed onnx package"

    def __call__(self, text):
        try:
            import onnx

            newest = onnx.defs.onnx_opset_version()
        except ImportError:  # the export says so, in its own line
            newest = 10**6
        return whole(MIN_OPSET, newest)(text)


onnx_opset = _Opset()


class _ClassesOrFraction:
    """split.py's --val-classes and --test-classes: a whole number of classes, or a fraction below 1
    (0: none; a fraction that rounds to no class at all is refused where the classes are counted)."""

    def bounds(self):
        return f"a whole number of classes between 0 and {MAX_CLASSES}, or a fraction below 1"

    def __call__(self, text):
        rule = "must be a whole number of classes (e.g. 8) or a fraction below 1 (e.g. 0.2)"
        try:
            value = _read_number(text, float)
        except _RoundsToZero:  # 1e-400: not 0, but it reads as 0
            raise argparse.ArgumentTypeError(f"{rule}, not {text} (it is too small: it rounds to 0)") from None
        if value is None:
            raise argparse.ArgumentTypeError(f"{rule}, not {text!r}")
        if not (math.isfinite(value) and value >= 0 and (value < 1 or value.is_integer())):
            raise argparse.ArgumentTypeError(f"{rule}, not {text}")
        if value > MAX_CLASSES:
            raise argparse.ArgumentTypeError(f"must be at most {MAX_CLASSES} classes, not {text}")
        return value if value < 1 else int(value)


classes_or_fraction = _ClassesOrFraction()
