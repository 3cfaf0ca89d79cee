"""The scripts' command lines: one help layout (the whole docstring with its examples, each
option by its canonical kebab-case spelling with its default) and the option groups that
several scripts share, so that no script imports another. No torch here.

Older spellings (--out_path, --train_path, -lr, --engine for a model file) keep working as
hidden aliases: they parse, and --help shows only the canonical name.
"""

import argparse

HIDDEN_ALIASES = {"--out-path", "--engine", "-lr"}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written (examples keep their lines); options without their aliases;
    '(default: X)' added where the help does not already speak of the default."""

    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        shown = [s for s in action.option_strings if "_" not in s and s not in HIDDEN_ALIASES]
        shown = shown or action.option_strings[:1]
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


def script_parser(doc):
    """An ArgumentParser whose --help shows the script's whole docstring."""
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)


def add_out_option(p, help, **kwargs):
    """-o/--out, the one spelling of every script's out path (dest out_path)."""
    p.add_argument("-o", "--out", "--out-path", "--out_path", dest="out_path", metavar="PATH", type=str, help=help,
                   **kwargs)


def add_pytorch_options(p, device_help="auto, cpu, cuda or cuda:N"):
    """--device, --amp, --compile, --tf32 of a script that runs a checkpoint on PyTorch
    (predict.TorchPredictor's parameters)."""
    p.add_argument("--device", default="auto", type=str, help=device_help)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="mixed precision: bfloat16 on CPUs and on GPUs of compute capability 8.0 (Ampere) and newer, "
                        "float16 on older GPUs")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the embedder (pays off on many images; the compile time is printed)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="on GPUs of compute capability 8.0 and newer, float32 convolutions and matrix products use TF32 "
                        "tensor cores (--no-tf32: full float32)")


def add_model_option(p, help="a deployed model: .onnx file (ONNX Runtime) or TensorRT engine (with ENGINE.json "
                             "beside it)", **kwargs):
    """-m/--model, a deployed model file (dest engine; --engine is its older spelling)."""
    p.add_argument("-m", "--model", "--engine", dest="engine", metavar="MODEL", type=str, help=help, **kwargs)
