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

from .errors import UserError

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
        text = action.help or ""
        if ("default" in text.lower() or action.default in (None, False, argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


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


_WHOLE = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)
_NONZERO_DIGIT = re.compile(r"[1-9]")


@dataclass(frozen=True)
class Number:
    """The type of a number option, the one check of its value: argparse's type= on the command
    line (a bad value is one line before anything runs), and check() for a value from a file
    (args.json). A whole (int) or a finite (float) number from `low` (excluded with `above`) to
    `high` (excluded with `below`); `off` is a value that turns the option off (accepted, and
    named as such), `word` a word taken besides numbers ('all', 'auto'), `noun` what the message
    calls the value ('--dropout is a probability from ...'), `unit` what the bound counts."""

    kind: type = float
    low: float | None = None
    high: float | None = None
    above: bool = False
    below: bool = False
    off: float | None = None
    word: str | None = None
    noun: str | None = None
    unit: str | None = None

    def _range(self):
        low = f"{self.low}{' (off)' if self.off == self.low else ''}{' ' + self.unit if self.unit else ''}"
        if self.high is None:
            text = f"above {low}" if self.above else f"at least {low}"
        elif self.below:
            text = f"from {low} up to, not including, {self.high}"
        else:
            text = f"between {low} and {self.high}"
        return text if self.off is None or self.off == self.low else f"{self.off} (off) or {text}"

    def refusal(self, value, shown=None):
        """'must be at least 1, not 0': what the option takes, and what it was given."""
        number = isinstance(value, (int, float)) and math.isfinite(value)
        text = self._range()
        if not number and not self.noun:
            kind = "a whole number" if self.kind is int else "a finite number"
            text = f"{kind} {'of ' if text.startswith('at least') else ''}{text}"
        text = f"'{self.word}' or {text}" if self.word else text
        shown = shown if shown is not None else value
        return f"{f'is {self.noun}' if self.noun else 'must be'} {text}, not {shown if number else repr(str(shown))}"

    def fits(self, value):
        if value is None or value == self.off or (self.word is not None and value == self.word):
            return True
        low_fits = self.low is None or value > self.low or (value == self.low and not self.above)
        high_fits = self.high is None or value < self.high or (value == self.high and not self.below)
        return math.isfinite(value) and low_fits and high_fits

    def check(self, value, name):
        """The value (None: not given), or a UserError naming the option."""
        if not self.fits(value):
            raise UserError(f"{name} {self.refusal(value)}")
        return value

    def __call__(self, text):
        if self.word is not None and text == self.word:
            return text
        # Python's int() and float() also read other scripts' digits and '1_0'; a number given
        # in ASCII digits only is what a user means, and a float that is not zero but rounds to
        # it (1e-400) would turn an option off
        written = _WHOLE if self.kind is int else _DECIMAL
        try:
            if not written.fullmatch(text.strip()):
                raise ValueError(text)
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(self.refusal(None, text)) from None
        if value == 0 and self.kind is float and _NONZERO_DIGIT.search(text.lower().split("e")[0]):
            raise argparse.ArgumentTypeError(self.refusal(None, text) + " (it is too small: it rounds to 0)")
        if not self.fits(value):
            raise argparse.ArgumentTypeError(self.refusal(value, text))
        return value


def at_least(low, **kwargs):
    """A whole number of at least `low` (a count, a size, a batch)."""
    return Number(int, low, **kwargs)


SEED = Number(int, 0, 2**32 - 1)  # every seed of every script: numpy's and torch's generators take it
PROBABILITY = Number(float, 0, 1)  # thresholds, --erase, --max-auc-drop
OFF_OR_FRACTION = Number(float, 0, 1, below=True, off=0)  # a decay or margin below 1; 0: off
POSITIVE = Number(float, 0, above=True)  # a learning rate, a tolerance
NON_NEGATIVE = Number(float, 0)  # a weight, a scale
FAR = Number(float, 0, 1, below=True, off=0, noun="a false accept rate")  # --threshold-at-far, in every script
# The oldest opset torch.onnx's exporter implements: it exports 18 and converts to the others,
# down with a warning and often not at all (resnet18 failed at 7, 9 and 13; export.py refuses it).
MIN_OPSET = 18


def onnx_opset(text):
    """--opset: from MIN_OPSET to the newest opset the installed onnx package knows."""
    try:
        import onnx

        newest = onnx.defs.onnx_opset_version()
    except ImportError:  # the export says so, in its own line
        newest = None
    return Number(int, MIN_OPSET, newest)(text)


def classes_or_fraction(text):
    """split.py's --val-classes and --test-classes: a whole number of classes, or a fraction below 1."""
    try:
        value = float(text) if _DECIMAL.fullmatch(text.strip()) else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0 and (value < 1 or value.is_integer())):
        raise argparse.ArgumentTypeError(f"must be a whole number of classes (e.g. 8) or a fraction below 1 (e.g. "
                                         f"0.2), not {text}")
    return value if value < 1 else int(value)
