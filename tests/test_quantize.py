"""INT8 copies of an export (onnx_to_int8.py): calibrated, checked, run by the deployed runtimes,
built into TensorRT engines (against the fake TensorRT), and refused in one line when they cannot be."""

import json
import os
import re

import numpy as np
import onnx
import pytest

import onnx_to_int8
from fake_tensorrt import FakeCuda, make_fake_tensorrt
from siamese.contract import PARTS, part_path
from siamese.errors import UserError
from siamese.images import scan_folder
from siamese.pairs import all_pairs
from siamese.runtime import OnnxRuntimeModel, load_deployed_model
from siamese.scoring import score_pairs
from siamese.trt import EngineBuild, TensorRTModel, build_engine_file

# The tiny test model barely ranks the pairs (similarities within 0.01 of each other), so its
# ROC-AUC moves with any rounding: the check is shown, not enforced, here.
SMALL = ["--calibration-images", "8", "--check-images", "10", "--max-auc-drop", "1"]


def _metadata(path):
    return {p.key: p.value for p in onnx.load(path).metadata_props}


@pytest.fixture(scope="module")
def int8_models(onnx_model, tiny_dataset, tmp_path_factory):
    """{target: the INT8 copy of the tiny export}, calibrated on the training folder."""
    folder = tmp_path_factory.mktemp("int8")
    paths = {}
    for target in ("onnxruntime", "tensorrt"):
        paths[target] = str(folder / f"model.{target}.onnx")
        assert onnx_to_int8.main(["--onnx", onnx_model, "--calibration", tiny_dataset[0], "-o", paths[target], "--target", target,
                                  *SMALL]) == 0
    return paths


def test_the_copies_carry_their_precision_target_and_calibration(int8_models, onnx_model, tiny_dataset):
    for target, path in int8_models.items():
        for part in PARTS:
            meta, float_meta = _metadata(part_path(path, part)), _metadata(part_path(onnx_model, part))
            assert meta["siamese.precision"] == "int8" and meta["siamese.int8_target"] == target
            assert meta["siamese.calibration"] == os.path.abspath(tiny_dataset[0])
            assert meta["siamese.calibration_images"] == "8" and meta["siamese.calibration_method"] == "minmax"
            assert meta["siamese.fingerprint"] == float_meta["siamese.fingerprint"]  # the same weights
            graph = onnx.load(part_path(path, part)).graph
            assert any(node.op_type == "QuantizeLinear" for node in graph.node), f"{part} of {target} not quantized"


def test_the_copies_score_like_the_float_model_and_are_used_whole(int8_models, onnx_model, tiny_dataset):
    pairs = [(p.left, p.right) for p in all_pairs(scan_folder(tiny_dataset[1]))]
    reference = score_pairs(load_deployed_model(onnx_model), pairs)
    for target, path in int8_models.items():
        model = load_deployed_model(path)
        assert [part.metadata["siamese.precision"] for part in model.parts] == ["int8", "int8"]  # its own parts
        assert model.index_key().split(":")[1] == "int8"  # a gallery index of the float model is not reused
        scores = score_pairs(model, pairs)
        # The documented bound (docs/deployment.md): similarities within 0.1 of the float model's.
        assert np.abs(scores - reference).max() < 0.1, target
        assert not np.allclose(scores, reference, atol=1e-6)  # it did change the arithmetic
        np.testing.assert_allclose(model.score_whole_pairs(pairs[:20]), scores[:20], atol=0.1)


@pytest.mark.slow
def test_the_check_refuses_a_copy_that_loses_too_much(onnx_model, tiny_dataset, tmp_path, capsys, monkeypatch):
    import siamese.quantize

    compare = siamese.quantize.compare

    def lost(*args, **kwargs):  # a copy 0.5 ROC-AUC below the float model (a negative --max-auc-drop is refused)
        report = compare(*args, **kwargs)
        report["int8"]["auc"] = report["float"]["auc"] - 0.5
        return report

    monkeypatch.setattr(siamese.quantize, "compare", lost)
    out = str(tmp_path / "model.int8.onnx")
    assert onnx_to_int8.main(["--onnx", onnx_model, "--calibration", tiny_dataset[0], "-o", out, *SMALL,
                              "--max-auc-drop", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ROC-AUC (more than --max-auc-drop 0.1)" in err[0] and "nothing was written" in err[0]
    assert sorted(os.listdir(tmp_path)) == []  # no copy, no temporary, no lock left


@pytest.mark.parametrize("case, message", [
    ("missing_calibration", "calibration folder"),
    ("one_class_calibration", "only one class"),
    ("too_few_images", "calibrating on 50 and checking on classes of 10 other images needs more"),
    ("already_int8", "is already int8; quantize the float32 export"),
    ("existing_out", "already exists"),
    ("method", "--method must be one of minmax, percentile, not 'entropy'"),
    ("quantization_fails", "ONNX Runtime could not quantize"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, message, onnx_model, int8_models, tiny_dataset, tmp_path,
                                                  capsys, monkeypatch):
    out = str(tmp_path / "out" / "model.int8.onnx")
    args = ["--onnx", onnx_model, "--calibration", tiny_dataset[0], "-o", out, *SMALL]
    if case == "missing_calibration":
        args[3] = str(tmp_path / "nowhere")
    elif case == "one_class_calibration":
        os.makedirs(tmp_path / "one" / "a")
        for i in range(3):
            os.link(scan_folder(tiny_dataset[0]).paths[i], tmp_path / "one" / "a" / f"{i}.png")
        args[3] = str(tmp_path / "one")
    elif case == "too_few_images":
        args += ["--calibration-images", "50"]
    elif case == "already_int8":
        args[1] = int8_models["onnxruntime"]
    elif case == "existing_out":
        os.makedirs(tmp_path / "out")
        open(out, "w").write("kept")
    elif case == "method":
        args += ["--method", "entropy"]  # what quantize_static runs as minmax
    elif case == "quantization_fails":
        import onnxruntime.quantization

        def broken(*a, **k):
            raise RuntimeError("unsupported operator")

        monkeypatch.setattr(onnxruntime.quantization, "quantize_static", broken)
    assert onnx_to_int8.main(args) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert message in err[-1] and "Traceback" not in "".join(err)
    if case == "existing_out":
        assert open(out).read() == "kept"
    elif os.path.isdir(tmp_path / "out"):
        assert [name for name in os.listdir(tmp_path / "out") if not name.endswith(".lock")] == []


def test_tensorrt_builds_int8_engines_only_from_the_tensorrt_copy(int8_models, tiny_dataset, tmp_path):
    for version, flag in (("10.9.0", True), ("11.0.0", False)):
        trt = make_fake_tensorrt(version)
        with pytest.raises(UserError, match="quantized for ONNX Runtime"):
            build_engine_file(int8_models["onnxruntime"], str(tmp_path / "refused.engine"), trt=trt, log=lambda *a: None)
        with pytest.raises(UserError, match="--fp16 does not apply to an INT8 model"):
            build_engine_file(int8_models["tensorrt"], str(tmp_path / "refused.engine"), EngineBuild(fp16=True), trt=trt,
                              log=lambda *a: None)
        engines = {}
        for part in PARTS:
            engines[part] = str(tmp_path / version / ("model.engine" if part == "pair" else f"model.{part}.engine"))
            os.makedirs(os.path.dirname(engines[part]), exist_ok=True)
            meta = build_engine_file(part_path(int8_models["tensorrt"], part), engines[part],
                                     EngineBuild(min_batch=1, opt_batch=4, max_batch=64), trt=trt, log=lambda *a: None)
            assert meta["precision"] == "int8" and meta["siamese.precision"] == "int8" and meta["tf32"] is False
        built = [flags for call, flags, _ in (c for c in trt.calls if c[0] == "build")]
        assert all(("INT8" in flags) == flag and "TF32" not in flags for flags in built)
        pairs = [(p.left, p.right) for p in all_pairs(scan_folder(tiny_dataset[1]))][:40]
        engine = TensorRTModel(engines["pair"], trt=trt, cuda=FakeCuda())
        np.testing.assert_allclose(score_pairs(engine, pairs), score_pairs(OnnxRuntimeModel(int8_models["tensorrt"]), pairs),
                                   atol=1e-5)
        assert json.load(open(engines["pair"] + ".json"))["siamese.int8_target"] == "tensorrt"


def test_tensorrt_refuses_an_asymmetric_quantization(int8_models, tmp_path):
    """The fake parser refuses what TensorRT refuses: the guard above is what keeps users from it."""
    from siamese import trt as trt_module

    trt = make_fake_tensorrt("10.9.0")
    _, builder, network = trt_module._parse(trt, int8_models["tensorrt"])  # symmetric: parses
    with pytest.raises(UserError, match="zero point must be INT8 and 0"):
        trt_module._parse(trt, int8_models["onnxruntime"])


@pytest.mark.parametrize("method", ["percentile"])
def test_histogram_methods_calibrate_on_any_image_count(method, onnx_model, tmp_path, capfd):
    """17 images (a prime number, one more than a batch): the batches must be of one size for a
    histogram method, which stacks them. The calibrator's own progress stays off the terminal."""
    from conftest import make_folder

    folder, out = make_folder(str(tmp_path / "calibration"), classes=4, per_class=12), str(tmp_path / "model.int8.onnx")
    assert onnx_to_int8.main(["--onnx", onnx_model, "--calibration", folder, "-o", out, *SMALL,
                              "--calibration-images", "17", "--method", method]) == 0
    assert _metadata(out)["siamese.calibration_method"] == method
    out, err = capfd.readouterr()
    assert not re.search(r"(?i)making histogram|number of tensors|collecting tensor", out + err), out + err


@pytest.mark.slow
def test_percentile_calibration_holds_one_batch_at_a_time(onnx_model, tmp_path, monkeypatch):
    """The percentile method's histograms are fed a batch at a time: ONNX Runtime otherwise keeps
    every activation of every calibration batch until the end (18.6 GB for the ORL recipe's model
    at 200 images, against 3.2 GB batch by batch)."""
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    from conftest import make_folder

    collect, batches_per_call = HistogramCalibrater.collect_data, []

    def counting(self, reader):
        class Counted:
            def get_next(self):
                inputs = reader.get_next()
                if inputs:
                    batches_per_call[-1] += 1
                return inputs

        batches_per_call.append(0)
        return collect(self, Counted())

    monkeypatch.setattr(HistogramCalibrater, "collect_data", counting)
    folder, out = make_folder(str(tmp_path / "calibration"), classes=6, per_class=10), str(tmp_path / "model.int8.onnx")
    assert onnx_to_int8.main(["--onnx", onnx_model, "--calibration", folder, "-o", out, *SMALL,
                              "--calibration-images", "40", "--method", "percentile"]) == 0
    assert len(batches_per_call) >= 3 * 4 and set(batches_per_call) == {1}  # 4+ batches for each of 3 parts


def test_calibration_batches_are_of_one_size():
    from siamese.quantize import _batches

    for count in (1, 7, 16, 20, 200, 201):
        sizes = {s.stop - s.start for s in _batches(count)}
        assert len(sizes) == 1 and sum(s.stop - s.start for s in _batches(count)) == count


@pytest.mark.parametrize("room", ["none", "less than the copies need"])
def test_a_full_disk_is_one_line_naming_the_out_path(room, onnx_model, tiny_dataset, tmp_path, capfd):
    """Nothing of ONNX Runtime's own log or tracebacks reaches the terminal: one line, naming the
    out path, whether the disk is full or fills up under the tool (which then writes a truncated
    copy without a word)."""
    from test_faults import _small_disk

    size = "64k" if room == "none" else str(int(1.2 * os.path.getsize(part_path(onnx_model, "embed"))))
    with _small_disk(str(tmp_path / "disk"), size) as disk:
        out = os.path.join(disk, "model.int8.onnx")
        capfd.readouterr()
        assert onnx_to_int8.main(["--onnx", onnx_model, "--calibration", tiny_dataset[0], "-o", out, *SMALL]) == 2
        err = capfd.readouterr().err
        assert "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert f"the device that holds '{part_path(out, 'embed')}'" in err and "free some space" in err, err
        assert os.listdir(disk) == []  # no copy, no temporary, no lock
