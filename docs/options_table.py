"""Writes docs/options.md: every script's options as a table, from the scripts' own parsers, so
the reference cannot drift from what the scripts accept (tests/test_readme.py checks it): each
option's default, the range its type declares (every number has an upper bound) and its help.

    python docs/options_table.py > docs/options.md
"""

import argparse
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("split", "train", "crossval", "eval", "identify", "torch_to_onnx", "onnx_to_int8", "onnx_to_trt",
           "infer_tensorrt", "eval_tensorrt", "serve", "demo")


def _cell(text):
    return " ".join(str(text).split()).replace("|", "\\|")


def script_table(name):
    sys.path.insert(0, ROOT)
    from siamese.options import HIDDEN_ALIASES, bounds_of

    module = importlib.import_module(name)
    parser = module.get_args_parser()
    summary = " ".join(module.__doc__.strip().split("\n\n")[0].split())  # the docstring's first paragraph
    lines = [f"## {name}.py", "", summary, "",
             "| option | default | range | meaning |", "|---|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        shown = [s for s in action.option_strings if "_" not in s and s not in HIDDEN_ALIASES] or [action.dest]
        if isinstance(action, argparse.BooleanOptionalAction):
            shown = [s for s in shown if not s.startswith("--no-")]
        default = ("required" if action.required else
                   "" if action.default is None or action.default is False else action.default)
        help_text = (action.help or "").replace("%(default)s", str(action.default)).replace(" (default: %(default)s)", "")
        lines.append(f"| `{'/'.join(shown)}` | {_cell(default)} | {_cell(bounds_of(action.type) or '')} | "
                     f"{_cell(help_text)} |")
    return "\n".join(lines)


def reference():
    head = ("# Options of every script\n\nGenerated from the scripts' parsers by `python docs/options_table.py > "
            "docs/options.md`; each script's `--help` shows the same, with its examples. Older spellings "
            "(`--train_path`, `--out_path`, `-lr`, `--engine`) still work.\n")
    return head + "\n" + "\n\n".join(script_table(name) for name in SCRIPTS) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
