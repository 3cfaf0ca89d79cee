"""Numbers by their declared range. Every number option of every script (found by walking the
scripts' parsers, so a new option or script is covered without a word here) and every key of
args.json are fed values from the edges: 0, -1, a huge number, 1e-400, NaN, infinities, the
declared bounds and one step past them, wrong types. Each command ends with exit 0, or with
exit 2 and one line, no traceback, and within a time bound; a huge count is refused by its
declared upper bound before anything runs. The defaults run on a machine of one CPU core."""

import argparse
import contextlib
import dataclasses
import functools
import importlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, make_folder
from siamese.errors import cli
from siamese.options import TEXT_TYPES, Number, bounds_of, help_text
from siamese.options import shown_spellings as _shown
from siamese.settings import RECORDED_DATA, RECORDED_ONLY, TrainingSettings

HUGE = "99999999999999999999"
EDGES = ("0", "-0", "-1", "1", "0.5", "2.0", HUGE, "-" + HUGE, "1e-400", "1e308", "1e999", "nan", "-nan", "inf", "-inf",
         "Infinity", "abc", "", " ", "[]", "{}", "true", "null", "1_0", "0x10", "\u0663", "\uff13", "1e", "--")
JSON_EDGES = ("0", "-1", "1", "1.5", "-0.0", HUGE, "-" + HUGE, "1e-400", "1e308", "1e999", "NaN", "Infinity", "-Infinity",
              '"abc"', '""', '"1"', '"nan"', "[]", "{}", "[5]", '["x", 5]', '{"a": 1}', "true", "false", "null")
TIME_BOUND = 20  # seconds for one parse and validation: they take milliseconds (the first --opset imports onnx)


def _scripts():
    """Every script at the top of the project (each has get_args_parser())."""
    return sorted(name[:-3] for name in os.listdir(ROOT) if name.endswith(".py")
                  and "def get_args_parser(" in open(os.path.join(ROOT, name), encoding="utf-8").read())


@functools.cache
def _settings_of(script):
    """The settings classes a script builds from its options, as its main() does."""
    import siamese.settings

    source = open(os.path.join(ROOT, script + ".py"), encoding="utf-8").read()
    return tuple(getattr(siamese.settings, name) for name in sorted(set(re.findall(r"(\w+Settings)\.from_namespace",
                                                                                    source))))


def _stage(script, argv):
    """What a script runs before any work: its parse (train.py's reads --config) and the
    validation of its settings."""
    module = importlib.import_module(script)
    args = (module.parse_args if hasattr(module, "parse_args") else module.get_args_parser().parse_args)(argv)
    for settings_class in _settings_of(script):
        settings_class.from_namespace(args)
    return 0


def run_stage(script, argv):
    """(exit code, stderr) of the script's parse and validation, run in this process through the
    scripts' own error handling (errors.cli); anything else, a traceback, fails the test."""
    err = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli(functools.partial(_stage, script))(argv)
    assert time.monotonic() - started < TIME_BOUND, (script, argv)
    return code, err.getvalue()


def _assert_clean(code, err, what):
    lines = err.strip().splitlines()
    assert code in (0, 2), (what, code, err)
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (what, err)
    return lines[0] if lines else ""


# What a script requires beyond its parser's required options: train.py takes --train-path or --config.
REQUIRED_BESIDES = {"train": ["--train-path", "x"]}


def _minimal_argv(parser, script):
    """The script's required options and positionals, each given a word."""
    argv = list(REQUIRED_BESIDES.get(script, []))
    for action in parser._actions:
        if not action.option_strings:
            argv.append("x")
        elif action.required:
            argv += [action.option_strings[0], "x"]
    for group in parser._mutually_exclusive_groups:
        if group.required:
            argv += [group._group_actions[0].option_strings[0], "x"]
    return argv


@functools.cache
def number_options():
    """(script, option spelling, action, minimal argv) for every option of every script that takes a number."""
    found = []
    for script in _scripts():
        parser = importlib.import_module(script).get_args_parser()
        for action in parser._actions:
            if action.option_strings and action.type not in TEXT_TYPES:
                if action.default is not None:
                    action.type(str(action.default))  # what a type imports (--opset: onnx), imported once here
                found.append((script, max(_shown(action), key=len), action, tuple(_minimal_argv(parser, script))))
    return found


def _edges_of(action):
    """The declared bounds of a number and one step past each."""
    kind = action.type
    if not isinstance(kind, Number):
        return ()
    step = 1 if kind.kind is int else 1e-9
    return tuple(str(kind.kind(v)) for v in (kind.low, kind.high, kind.low - step, kind.high + step))


def _feed(script, option, argv, value):
    return run_stage(script, [*argv, f"{option}={value}"])


def test_the_walk_finds_every_script_and_its_number_options():
    found = number_options()
    scripts = {script for script, *_ in found}
    assert {"train", "crossval", "eval", "eval_tensorrt", "identify", "split", "demo", "onnx_to_trt"} <= scripts
    assert len(found) > 80, len(found)  # the settings' options in four scripts, and each script's own
    assert _settings_of("train") == _settings_of("crossval") == (TrainingSettings,)
    for script in _scripts():  # each minimal command line is accepted: a refusal below is the number's
        parser = importlib.import_module(script).get_args_parser()
        assert run_stage(script, _minimal_argv(parser, script)) == (0, ""), script


def test_every_number_option_declares_an_upper_bound_shown_by_help_and_the_docs():
    reference = open(os.path.join(ROOT, "docs", "options.md"), encoding="utf-8").read()
    for script, option, action, argv in number_options():
        bounds = bounds_of(action.type)
        assert bounds, f"{script}.py {option} has a type without declared bounds"
        assert bounds in help_text(action), (script, option)
        assert f"| {bounds} |" in reference.replace("\\|", "|"), (script, option)


def test_every_number_option_refuses_a_huge_value_by_its_bound_and_takes_its_default():
    for script, option, action, argv in number_options():
        code, err = _feed(script, option, argv, HUGE)
        line = _assert_clean(code, err, (script, option))
        assert code == 2 and line.startswith(f"error: {'/'.join(_shown(action))} ") and HUGE in line, (script, line)
        if action.default is not None:
            assert _feed(script, option, argv, action.default) == (0, ""), (script, option)


def test_every_number_option_at_its_edges_is_accepted_or_one_line():
    """Each edge through the option's own type (what argparse calls); what it accepts, through
    the whole parse and validation of the script (a refusal there is the same one line)."""
    for script, option, action, argv in number_options():
        for value in EDGES + _edges_of(action):
            try:
                action.type(value)
            except argparse.ArgumentTypeError as refused:
                assert "\n" not in str(refused), (script, option, value, str(refused))
                continue
            _assert_clean(*_feed(script, option, argv, value), (script, option, value))


_VALUES = st.one_of(st.sampled_from(EDGES), st.integers(-10**30, 10**30).map(str), st.floats().map(repr),
                    st.floats(-10, 10).map(str), st.text(max_size=10))


def _given_number_options(max_examples, derandomize):
    @settings(max_examples=max_examples, deadline=None, derandomize=derandomize, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(chosen=st.sampled_from(number_options()), value=_VALUES)
    def check(chosen, value):
        script, option, action, argv = chosen
        _assert_clean(*_feed(script, option, argv, value), (script, option, value))
    return check


def test_generated_values_of_number_options():
    _given_number_options(150, True)()


@pytest.mark.slow
def test_many_generated_values_of_number_options():
    _given_number_options(5000, False)()


# --- args.json: every key through its option's own type ---------------------------------------

def _record_keys():
    return sorted(set(TrainingSettings().to_dict()) | set(RECORDED_DATA) | set(RECORDED_ONLY))


def _write_record(path, key, raw):
    """args.json holding `key` written as `raw` JSON (and a training folder)."""
    base = {} if key == "train_path" else {"train_path": ["data/train"]}
    with open(path, "w") as f:
        f.write(json.dumps({**base, key: "<value>"}).replace('"<value>"', raw))


def _config(folder, key, raw):
    """(exit code, stderr) of train.py --config with args.json holding `key` written as `raw` JSON."""
    path = os.path.join(folder, "args.json")
    _write_record(path, key, raw)
    return run_stage("train", ["--config", path, "-o", os.path.join(folder, "out")])


@pytest.fixture
def record_folder(tmp_path):
    """A folder for many small args.json files: in memory where the machine has /dev/shm (a
    disk's file creation costs milliseconds each)."""
    if not os.path.isdir("/dev/shm"):
        yield tmp_path
        return
    folder = tempfile.mkdtemp(dir="/dev/shm", prefix="siamese-test-")
    try:
        yield type(tmp_path)(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_every_key_of_args_json_at_the_edges_is_accepted_or_one_line_naming_file_and_key(record_folder):
    """Each edge through --config's reading (read_run_record, with train.py's options); what it
    accepts, through the whole parse and validation of train.py."""
    import train
    from siamese.errors import UserError
    from siamese.settings import read_run_record

    parser, path = train.get_args_parser(), str(record_folder / "args.json")
    recorded = {**TrainingSettings().to_dict(), "train_path": ["data/train"], "val_path": "data/val"}
    numbers = {f.name for f in dataclasses.fields(TrainingSettings) if f.metadata["number"]}
    for key in _record_keys():
        for raw in JSON_EDGES:
            _write_record(path, key, raw)
            try:
                read_run_record(path, parser)
            except UserError as refused:
                assert "\n" not in str(refused) and str(refused).startswith(f"--config '{path}'"), str(refused)
                assert f"': {key} " in str(refused) or key == "train_path", (key, raw, str(refused))
                continue
            if key not in RECORDED_ONLY:  # those describe the recorded run only: never read
                _assert_clean(*_config(str(record_folder), key, raw), (key, raw))
        if key in numbers:  # every number has an upper bound, in a file too
            code, err = _config(str(record_folder), key, HUGE)
            assert code == 2 and f"args.json': {key} " in err and HUGE in err, (key, err)
        if key in recorded:  # what train.py records is read back
            assert _config(str(record_folder), key, json.dumps(recorded[key])) == (0, ""), key


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**25, 10**25) | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                     max_leaves=6)


def _given_record_values(max_examples, derandomize):
    @settings(max_examples=max_examples, deadline=None, derandomize=derandomize, database=None)
    @given(key=st.sampled_from(_record_keys()), raw=st.one_of(st.sampled_from(JSON_EDGES), _JSON.map(json.dumps)))
    def check(key, raw):
        with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as folder:
            _assert_clean(*_config(folder, key, raw), (key, raw))
    return check


def test_generated_values_of_args_json():
    _given_record_values(100, True)()


@pytest.mark.slow
def test_many_generated_values_of_args_json():
    _given_record_values(1500, False)()


# --- the commands themselves: a huge count ends at once, by its bound ---------------------------

def _start(argv, cwd, **kwargs):
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def test_huge_counts_end_at_once_by_their_declared_bound(tmp_path):
    """These ran out of memory or into a traceback before: the run is only a guard (a real
    process, with a timeout), the bound is what refuses them, before the data is read."""
    data = make_folder(str(tmp_path / "data"), classes=3, per_class=3, size=16)
    (tmp_path / "args.json").write_text(f'{{"train_path": ["{data}"], "batch_size": {HUGE}}}')
    train = ["train.py", "--train-path", data, "--val-path", data, "-o", "out", "--weights", "none", "-e", "1",
             "--device", "cpu", "--workers", "0"]
    evaluate = ["-v", data, "-o", "out", "--workers", "0"]
    cases = {"--batch-size": train + ["--batch-size", HUGE],
             "--pairs-per-image": train + ["--pairs-per-image", HUGE],
             "--val-pairs-per-image": train + ["--val-pairs-per-image", HUGE],
             "--image-size": train + ["--image-size", "9000"],
             "args.json': batch_size": ["train.py", "--config", "args.json", "-o", "out"],
             "--trials": ["eval.py", *evaluate, "-c", "best.pth", "--n-way", "2", "--trials", HUGE],
             "--pairs-per-image ": ["eval.py", *evaluate, "-c", "best.pth", "--pairs-per-image", HUGE],
             "--batch-size ": ["eval.py", *evaluate, "-c", "best.pth", "--batch-size", HUGE],
             " --trials": ["eval_tensorrt.py", *evaluate, "-m", "model.onnx", "--n-way", "2", "--trials", HUGE]}
    started = {name: _start([os.path.join(ROOT, argv[0]), *argv[1:]], tmp_path) for name, argv in cases.items()}
    try:
        for name, process in started.items():
            try:
                _, err = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{cases[name]} still ran after 60 s")
            lines = err.strip().splitlines()
            assert process.returncode == 2 and len(lines) == 1, (cases[name], err)
            assert name.strip() in lines[0] and " must be at most " in lines[0], lines[0]
    finally:
        for process in started.values():
            process.kill()
            process.communicate()
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_counts_at_their_upper_bound_run_to_the_end(tiny_dataset, trained_checkpoint, tmp_path):
    """The bounds are ones a command can live with: each count at its bound finishes on the
    tiny data sets (the time limit is a guard against a hang, far above what they take)."""
    from siamese.options import MAX_BATCH, MAX_PAIRS_PER_IMAGE, MAX_TRIALS

    train_dir, val_dir = tiny_dataset
    cases = [["train.py", "--train-path", train_dir, "--val-path", val_dir, "-o", "run", "-e", "1", "--weights", "none",
              "--image-size", "32", "--device", "cpu", "--workers", "0", "--batch-size", str(MAX_BATCH),
              "--val-pairs-per-image", str(MAX_PAIRS_PER_IMAGE)],
             ["eval.py", "-v", val_dir, "-o", "trials", "-c", trained_checkpoint, "--device", "cpu", "--n-way", "2",
              "--trials", str(MAX_TRIALS), "--max-pictures", "0"],
             ["eval.py", "-v", val_dir, "-o", "pairs", "-c", trained_checkpoint, "--device", "cpu", "--pairs-per-image",
              str(MAX_PAIRS_PER_IMAGE), "--batch-size", str(MAX_BATCH), "--max-pictures", "0"]]
    for argv in cases:
        process = _start([os.path.join(ROOT, argv[0]), *argv[1:]], tmp_path)
        try:
            out, err = process.communicate(timeout=600)
        finally:
            process.kill()
            process.communicate()
        assert process.returncode == 0, (argv, err[-2000:])


# --- split.py: a fraction that rounds to no class -----------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--val-classes", "2", "--test-classes", "0.05"], "--test-classes 0.05 gives 0 of 6 classes; a test split needs"),
    (["--test-classes", "1e-400"], "--test-classes must be a whole number of classes (e.g. 8) or a fraction below 1 "
                                   "(e.g. 0.2), not 1e-400 (it is too small: it rounds to 0)"),
    (["--val-classes", "1e-400"], "--val-classes must be a whole number of classes"),
    (["--val-classes", HUGE], f"--val-classes must be at most 1000000 classes, not {HUGE}"),
])
def test_split_refuses_a_split_that_rounds_to_no_class(tmp_path, capsys, argv, message):
    import split

    data = make_folder(str(tmp_path / "photos"), classes=6, per_class=2, size=12)
    assert split.main([data, "-o", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not os.path.exists(tmp_path / "out")


# --- args.json: the command line's types, the file and key named --------------------------------

@pytest.mark.parametrize("record, message", [
    ({"threshold_at_far": "1e-400"}, "threshold_at_far is a false accept rate from 0 (off) up to, not including, 1, "
                                     "not '1e-400' (it is too small: it rounds to 0)"),
    ({"val_path": "5"}, "val_path must be a string, not 5"),
    ({"train_path": "[5]"}, "train_path must be a string or a list of them, not [5]"),
    ({"train_path": '{"a": 1}'}, 'train_path must be a string or a list of them, not {"a": 1}'),
    ({"batch_size": HUGE}, f"batch_size must be at most 65536, not {HUGE}"),
    ({"image_size": "9000"}, "image_size must be at most 8192 pixels, not 9000"),
    ({"amp": "1"}, "amp must be true or false, not 1"),
    ({"augment": '"fancy"'}, 'augment must be one of full, affine, flip, none, not "fancy"'),
])
def test_a_recorded_value_meets_the_command_lines_type_and_range(tmp_path, record, message):
    (key, raw), = record.items()
    code, err = _config(str(tmp_path), key, raw)
    assert code == 2 and err.strip() == f"error: --config '{tmp_path / 'args.json'}': {message}", err


# --- defaults that run on one CPU core ----------------------------------------------------------

ONE_CORE = """
import json, os, sys
sys.path[:0] = [{root!r}, {tests!r}]
import test_numbers, test_readme
from siamese.settings import EvaluationSettings, TrainingSettings

os.chdir({folder!r})
os.makedirs("runs/exp1", exist_ok=True)
with open("runs/exp1/args.json", "w") as f:  # what train.py records on this machine
    json.dump({{**TrainingSettings().to_dict(), "train_path": ["data/train"], "val_path": "data/val"}}, f)
ran = [(script, argv, *test_numbers.run_stage(script, argv)) for script, argv in test_readme._commands()]
given = test_numbers.run_stage("train", ["--train-path", "t", "-o", "o", "--workers", "2"])
print(json.dumps({{"cores": len(os.sched_getaffinity(0)), "ran": ran, "given": given,
                  "defaults": [TrainingSettings().workers, EvaluationSettings(val_path="v", out_path="o").workers]}}))
"""


def _on_one_core(argv, cwd, timeout):
    """A process of this Python allowed one CPU core (taskset -c 0, or the affinity set in the child)."""
    core = min(os.sched_getaffinity(0))
    if shutil.which("taskset"):
        command, preexec = ["taskset", "-c", str(core), sys.executable, *argv], None
    else:
        command, preexec = [sys.executable, *argv], lambda: os.sched_setaffinity(0, {core})
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is a Linux call")
def test_the_readme_commands_parse_and_validate_on_one_cpu_core(tmp_path):
    code = ONE_CORE.format(root=ROOT, tests=os.path.dirname(os.path.abspath(__file__)), folder=str(tmp_path))
    result = _on_one_core(["-c", code], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["cores"] == 1 and report["defaults"] == [1, 1]
    refused = [(script, " ".join(argv), err) for script, argv, status, err in report["ran"] if status != 0]
    assert len(report["ran"]) > 30 and not refused, refused
    status, err = report["given"]  # a number the user gave is still held to the cores
    assert status == 2 and "--workers must be at most the 1 CPU core(s) this machine lets the command use, not 2" in err


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is a Linux call")
def test_the_demo_runs_on_one_cpu_core(tmp_path):
    result = _on_one_core([os.path.join(ROOT, "demo.py"), "-o", str(tmp_path / "demo"), "--epochs", "1"], tmp_path,
                          timeout=1200)
    assert result.returncode == 0 and "demo done." in result.stdout, result.stderr[-2000:]
