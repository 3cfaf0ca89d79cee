"""TensorRT control flow against a fake `tensorrt` module that offers only TensorRT 10/11 names."""

import json
import os

import numpy as np
import pytest

from fake_tensorrt import FakeCuda, make_fake_tensorrt
from siamese.errors import UserError
from siamese.images import scan_folder
from siamese.runtime import OnnxRuntimeModel, TensorRTModel
from siamese.trt import build_engine_file


def _build(onnx_model, tmp_path, trt, **kwargs):
    engine = str(tmp_path / "model.engine")
    options = dict(min_batch=1, opt_batch=2, max_batch=4, trt=trt, gpu_name="Fake GPU (compute 9.0)", log=lambda *a: None)
    options.update(kwargs)
    return engine, build_engine_file(onnx_model, engine, **options)


def test_build_writes_engine_and_metadata(onnx_model, tmp_path):
    trt = make_fake_tensorrt("10.9.0")
    engine, meta = _build(onnx_model, tmp_path, trt, workspace_mib=64)
    assert os.path.isfile(engine)
    written = json.load(open(engine + ".json"))
    assert written == meta
    assert meta["max_batch"] == 4 and meta["precision"] == "fp32" and meta["tensorrt_version"] == "10.9.0"
    assert meta["siamese.image_size"] == "32" and meta["gpu"] == "Fake GPU (compute 9.0)"
    spec = json.loads(open(engine, "rb").read())
    assert spec["shapes"]["img1"] == [[1, 3, 32, 32], [2, 3, 32, 32], [4, 3, 32, 32]]
    assert spec["shapes"]["img2"] == spec["shapes"]["img1"]
    assert trt.calls[0] == ("build", [], {"WORKSPACE": 64 * 2**20})


def test_engine_scores_like_onnx_runtime_in_batches(onnx_model, tiny_dataset, tmp_path):
    trt = make_fake_tensorrt("10.9.0")
    engine, _ = _build(onnx_model, tmp_path, trt)
    cuda = FakeCuda()
    model = TensorRTModel(engine, trt=trt, cuda=cuda)
    assert model.max_batch == 4 and model.threshold is not None
    paths = scan_folder(tiny_dataset[1]).paths
    pairs = [(paths[i], paths[-1 - i]) for i in range(11)]  # 11 pairs: batches of 4, 4, 3
    scores = model.score_pairs(pairs)
    reference = OnnxRuntimeModel(onnx_model).score_pairs(pairs)
    np.testing.assert_allclose(scores, reference, atol=1e-6)
    assert [c[1] for c in trt.calls if c[0] == "execute"] == [4, 4, 3]
    x = np.stack([model.preprocessing.load(p) for p in paths[:9]])
    assert model.predict(x, x[::-1].copy()).shape == (9,)  # more than max_batch: split, not refused
    model.close()
    assert len(cuda.freed) == 3


def test_batches_below_the_profile_minimum_are_padded(onnx_model, tiny_dataset, tmp_path):
    trt = make_fake_tensorrt("10.9.0")
    engine, _ = _build(onnx_model, tmp_path, trt, min_batch=3, opt_batch=3, max_batch=4)
    model = TensorRTModel(engine, trt=trt, cuda=FakeCuda())
    paths = scan_folder(tiny_dataset[1]).paths
    pairs = [(paths[i], paths[-1 - i]) for i in range(5)]  # batches of 4 and 1 (padded to 3)
    np.testing.assert_allclose(model.score_pairs(pairs), OnnxRuntimeModel(onnx_model).score_pairs(pairs), atol=1e-6)
    assert [c[1] for c in trt.calls if c[0] == "execute"] == [4, 3]


def test_fp16_on_tensorrt_10_sets_the_builder_flag(onnx_model, tmp_path):
    trt = make_fake_tensorrt("10.9.0")
    _, meta = _build(onnx_model, tmp_path, trt, fp16=True)
    assert meta["precision"] == "fp16" and trt.calls[0][1] == ["FP16"]


def test_fp16_on_tensorrt_11_needs_an_fp16_onnx(onnx_model, trained_checkpoint, tiny_dataset, tmp_path):
    trt = make_fake_tensorrt("11.0.0")
    with pytest.raises(UserError, match="torch_to_onnx.py --fp16"):
        _build(onnx_model, tmp_path, trt, fp16=True)
    import torch_to_onnx

    half = str(tmp_path / "half.onnx")
    assert torch_to_onnx.main(["-c", trained_checkpoint, "-o", half, "--fp16", "--images", tiny_dataset[1]]) == 0
    _, meta = _build(half, tmp_path, trt, fp16=True)
    assert meta["precision"] == "fp16" and trt.calls[-1][1] == []  # no precision flags on 11.x


def test_timing_cache_is_written_and_reused(onnx_model, tmp_path):
    trt = make_fake_tensorrt("10.9.0")
    cache = str(tmp_path / "timing.cache")
    _build(onnx_model, tmp_path, trt, timing_cache=cache)
    first = open(cache, "rb").read()
    assert first.startswith(b"timing-cache:")
    _build(onnx_model, tmp_path, trt, timing_cache=cache)
    assert open(cache, "rb").read() == b"timing-cache:" + first


def test_errors(onnx_model, tmp_path):
    with pytest.raises(UserError, match="no usable NVIDIA GPU"):
        _build(onnx_model, tmp_path, make_fake_tensorrt(gpu_present=False))
    with pytest.raises(UserError, match="failed to build"):
        _build(onnx_model, tmp_path, make_fake_tensorrt(fail_build=True))
    with pytest.raises(UserError, match="min-batch"):
        _build(onnx_model, tmp_path, make_fake_tensorrt(), min_batch=4, opt_batch=2)
    with pytest.raises(UserError, match=r"--workspace \(MiB\) must be at least 1, not 0"):
        _build(onnx_model, tmp_path, make_fake_tensorrt(), workspace_mib=0)
    with pytest.raises(UserError, match="does not exist"):
        _build(str(tmp_path / "none.onnx"), tmp_path, make_fake_tensorrt())
    assert not os.path.exists(tmp_path / "model.engine")  # failed builds write nothing


def test_parser_errors_are_all_reported(onnx_model, tmp_path, monkeypatch):
    trt = make_fake_tensorrt()

    def broken(self, path):
        self.errors = ["In node 3 (Conv): unsupported", "In node 9 (Gemm): bad shape"]
        return False

    monkeypatch.setattr(trt.OnnxParser, "parse_from_file", broken)
    with pytest.raises(UserError) as error:
        _build(onnx_model, tmp_path, trt)
    assert "node 3 (Conv)" in str(error.value) and "node 9 (Gemm)" in str(error.value)


def test_engine_from_another_gpu_or_version(onnx_model, tmp_path):
    engine, _ = _build(onnx_model, tmp_path, make_fake_tensorrt("10.9.0", current_gpu="Fake GPU (compute 9.0)"))
    other = make_fake_tensorrt("10.9.0", current_gpu="Other GPU (compute 8.6)")
    with pytest.raises(UserError) as error:
        TensorRTModel(engine, trt=other, cuda=FakeCuda("Other GPU (compute 8.6)"))
    message = str(error.value)
    assert "built with TensorRT 10.9.0 on Fake GPU (compute 9.0)" in message and "Other GPU" in message
    assert "rebuild it here with onnx_to_trt.py" in message
    os.remove(engine + ".json")
    with pytest.raises(UserError, match="is missing"):
        TensorRTModel(engine, trt=make_fake_tensorrt(), cuda=FakeCuda())


def test_onnx_to_trt_script_without_tensorrt(onnx_model, tmp_path, capsys, monkeypatch):
    import sys

    import onnx_to_trt

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert onnx_to_trt.main(["--onnx", onnx_model, "--engine", str(tmp_path / "m.engine")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: TensorRT is not installed") and "\n" not in err


def test_removed_tensorrt_calls_are_absent_from_the_code():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    removed = ["build_cuda_engine", "build_engine(", "max_workspace_size", "max_batch_size", "fp16_mode",
               "binding_is_input", "get_binding_shape", "execute_async(", "execute_async_v2", "EXPLICIT_BATCH",
               "pycuda.autoinit"]
    for name in ["siamese/trt.py", "siamese/runtime.py", "siamese/cuda_memory.py", "onnx_to_trt.py",
                 "infer_tensorrt.py", "eval_tensorrt.py"]:
        code = open(os.path.join(root, name)).read()
        for call in removed:
            assert call not in code, f"{name} uses {call}"


def test_onnx_to_trt_never_replaces_its_input_or_an_existing_engine(onnx_model, tmp_path, capsys, monkeypatch):
    import sys

    import onnx_to_trt

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.9.0"))
    before = open(onnx_model, "rb").read()
    assert onnx_to_trt.main(["--onnx", onnx_model, "--engine", onnx_model, "--force"]) == 2
    assert "is the input" in capsys.readouterr().err and open(onnx_model, "rb").read() == before
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"an engine built last week")
    assert onnx_to_trt.main(["--onnx", onnx_model, "--engine", str(engine)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "\n" not in err and engine.read_bytes() == b"an engine built last week"


def test_onnx_to_trt_refuses_a_second_build_into_one_path(onnx_model, tmp_path, capsys, monkeypatch):
    import sys

    import onnx_to_trt
    from siamese.files import claim_beside

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.9.0"))
    engine = str(tmp_path / "m.engine")
    with claim_beside(engine, what="engine path"):  # as another onnx_to_trt.py building it
        assert onnx_to_trt.main(["--onnx", onnx_model, "--engine", engine]) == 2
    assert "in use by another command" in capsys.readouterr().err and not os.path.exists(engine)
