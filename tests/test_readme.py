"""The README's commands are what users copy: each must parse with its script's arguments, and
every train.py option must be documented."""

import importlib
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("train", "eval", "torch_to_onnx", "onnx_to_trt", "infer_tensorrt", "eval_tensorrt", "demo", "crossval", "identify")


def _readme():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def _commands():
    """(script, argv) for every `python X.py ...` or `torchrun ... X.py ...` line in a code block."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", _readme(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("#")[0])
            if not words or words[0] not in ("python", "torchrun") or "..." in words:
                continue
            script = next((w for w in words if w.endswith(".py")), None)
            if script and script[:-3] in SCRIPTS:
                found.append((script[:-3], words[words.index(script) + 1:]))
    return found


def test_readme_has_the_recipe_commands():
    scripts = [script for script, _ in _commands()]
    assert scripts.count("train") >= 4 and scripts.count("eval") >= 4
    assert {"torch_to_onnx", "onnx_to_trt", "infer_tensorrt", "eval_tensorrt"} <= set(scripts)


@pytest.mark.parametrize("script,argv", _commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_readme_command_parses(script, argv):
    parser = importlib.import_module(script).get_args_parser()
    parser.parse_args(argv)  # exits (SystemExit) on an unknown or malformed option


def test_every_train_option_is_documented():
    readme = _readme()
    parser = importlib.import_module("train").get_args_parser()
    options = [max(action.option_strings, key=len) for action in parser._actions if action.option_strings]
    missing = [o for o in options if o != "--help" and f"`{o}" not in readme and f"/{o}`" not in readme]
    assert not missing, f"train.py options missing from README.md: {missing}"
