"""The README's and docs' commands are what users copy: each must parse with its script's
arguments, every train.py option must be documented, the README stays short and its links lead
to pages that exist."""

import importlib
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("train", "eval", "torch_to_onnx", "onnx_to_trt", "onnx_to_int8", "infer_tensorrt", "eval_tensorrt", "demo",
           "crossval", "identify", "split", "serve")


def _readme():
    """The README and the docs/ pages it links: what users read and copy from."""
    pages = ["README.md"] + sorted(os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs"))
                                   if name.endswith(".md"))
    text = []
    for page in pages:
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            text.append(f.read())
    return "\n".join(text)


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
    from siamese.options import HIDDEN_ALIASES

    options = [max([s for s in action.option_strings if "_" not in s and s not in HIDDEN_ALIASES], key=len)
               for action in parser._actions if action.option_strings]
    missing = [o for o in options if o != "--help" and f"`{o}" not in readme and f"/{o}`" not in readme]
    assert not missing, f"train.py options missing from README.md: {missing}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_the_whole_docstring_and_canonical_names_only(script, capsys):
    module = importlib.import_module(script)
    with pytest.raises(SystemExit):
        module.get_args_parser().parse_args(["--help"])
    shown = capsys.readouterr().out
    assert module.__doc__.strip().splitlines()[-1].strip() in shown  # the docstring to its last line, examples too
    for alias in ("--out_path", "--train_path", "--val_path", "--learning_rate", "--out-path", "--engine"):
        assert alias not in shown.split("Example")[-1].split("options:")[-1]  # the option list names no alias
    assert "(default: None)" not in shown and shown.count("(default:") == len(
        [line for line in shown.split("options:")[-1].splitlines() if "(default:" in line])


def test_old_spellings_still_parse_to_the_same_options():
    import eval as eval_script
    import infer_tensorrt
    import train

    old = train.get_args_parser().parse_args(["--train_path", "a", "--val_path", "b", "--out_path", "c", "-lr", "0.1"])
    new = train.get_args_parser().parse_args(["--train-path", "a", "--val-path", "b", "-o", "c", "--learning-rate", "0.1"])
    assert vars(old) == vars(new)
    assert eval_script.get_args_parser().parse_args(["-v", "v", "--out-path", "o", "-c", "x"]).out_path == "o"
    assert infer_tensorrt.get_args_parser().parse_args(["--image1", "a", "--image2", "b", "--engine", "m"]).engine == "m"


def test_the_readme_is_short_and_its_links_lead_somewhere():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert len(readme.splitlines()) <= 170
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert "docs/your-data.md" in links and "docs/crossval.md" in links
    for link in links:
        assert os.path.isfile(os.path.join(ROOT, link)), link
    for script in ("split", "train", "eval", "torch_to_onnx", "infer_tensorrt", "identify"):
        assert f"python {script}.py" in readme  # the five steps show each main command


def test_the_options_reference_is_generated_from_the_parsers():
    import sys

    sys.path.insert(0, os.path.join(ROOT, "docs"))
    import options_table

    with open(os.path.join(ROOT, "docs", "options.md"), encoding="utf-8") as f:
        written = f.read()
    assert written == options_table.reference(), "docs/options.md is stale: python docs/options_table.py > docs/options.md"
