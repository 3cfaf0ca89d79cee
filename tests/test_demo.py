"""The README's first command: the demo end to end (one epoch), as a newcomer runs it."""

import json
import os

import pytest

import demo


@pytest.mark.slow
def test_the_demo_trains_evaluates_exports_infers_and_identifies(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert demo.main(["-o", out, "--epochs", "1", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "demo done." in printed and "Similarity between the two images = " in printed
    for path in ("model/best.pth", "eval/metrics.json", "eval/roc.png", "model.onnx", "model.embed.onnx",
                 "model.head.onnx", "identify/matches.csv"):
        assert os.path.isfile(os.path.join(out, path)), path
    metrics = json.load(open(os.path.join(out, "eval", "metrics.json")))
    assert metrics["one_shot"]["n_way"] == 5 and 0.5 < metrics["auc"] <= 1.0  # one epoch already tells digits apart
    # it ends with the one command that serves the demo model
    served = next(line for line in printed.splitlines() if "python serve.py" in line)
    import serve

    args = serve.get_args_parser().parse_args(served.split("python serve.py", 1)[1].split("(")[0].split())
    assert os.path.samefile(args.engine, os.path.join(out, "model.onnx")) and os.path.isdir(args.gallery)


def test_a_bad_option_is_refused_before_the_images_are_written(tmp_path, capsys):
    from siamese.errors import usable_cpus

    out = str(tmp_path / "demo")
    assert demo.main(["-o", out, "--workers", str(usable_cpus() + 1)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "--workers" in err, err
    assert not os.path.exists(out)
