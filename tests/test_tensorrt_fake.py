"""TensorRT control flow against a fake `tensorrt` module that offers only TensorRT 10/11 names."""

import json
import os

import numpy as np
import pytest

from fake_tensorrt import FakeCuda, make_fake_tensorrt
from siamese.errors import UserError
from siamese.images import scan_folder
from siamese.runtime import OnnxRuntimeModel
from siamese.trt import TensorRTModel
from siamese.trt import EngineBuild, build_engine_file
from siamese.scoring import score_pairs


def _build(onnx_model, tmp_path, trt, log=lambda *a: None, **kwargs):
    engine = str(tmp_path / "model.engine")
    build = EngineBuild(**{"min_batch": 1, "opt_batch": 2, "max_batch": 4, **kwargs})
    return engine, build_engine_file(onnx_model, engine, build, trt=trt, gpu_name="Fake GPU (compute 9.0)", log=log)


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
    # an fp32 engine is fp32: TensorRT's default TF32 (Ampere and newer) is cleared, and the sidecar says so
    assert trt.calls[0] == ("build", [], {"WORKSPACE": 64 * 2**20}) and meta["tf32"] is False


def test_engine_scores_like_onnx_runtime_in_batches(onnx_model, tiny_dataset, tmp_path):
    trt = make_fake_tensorrt("10.9.0")
    engine, _ = _build(onnx_model, tmp_path, trt)
    cuda = FakeCuda()
    model = TensorRTModel(engine, trt=trt, cuda=cuda)
    assert model.max_batch == 4 and model.threshold is not None
    paths = scan_folder(tiny_dataset[1]).paths
    pairs = [(paths[i], paths[-1 - i]) for i in range(11)]  # 11 pairs: batches of 4, 4, 3
    scores = score_pairs(model, pairs)
    reference = score_pairs(OnnxRuntimeModel(onnx_model), pairs)
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
    np.testing.assert_allclose(score_pairs(model, pairs), score_pairs(OnnxRuntimeModel(onnx_model), pairs), atol=1e-6)
    assert [c[1] for c in trt.calls if c[0] == "execute"] == [4, 3]


def test_fp16_on_tensorrt_10_sets_the_builder_flag(onnx_model, tmp_path):
    trt = make_fake_tensorrt("10.9.0")
    _, meta = _build(onnx_model, tmp_path, trt, fp16=True)
    assert meta["precision"] == "fp16" and trt.calls[0][1] == ["FP16", "TF32"] and meta["tf32"] is True


@pytest.mark.slow
def test_fp16_on_tensorrt_11_needs_an_fp16_onnx(onnx_model, trained_checkpoint, tiny_dataset, tmp_path):
    trt = make_fake_tensorrt("11.0.0")
    with pytest.raises(UserError, match="torch_to_onnx.py --fp16"):
        _build(onnx_model, tmp_path, trt, fp16=True)
    import torch_to_onnx

    half = str(tmp_path / "half.onnx")
    assert torch_to_onnx.main(["-c", trained_checkpoint, "-o", half, "--fp16", "--images", tiny_dataset[1]]) == 0
    _, meta = _build(half, tmp_path, trt, fp16=True)
    assert meta["precision"] == "fp16" and trt.calls[-1][1] == ["TF32"]  # no FP16 flag on 11.x


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
    for name in ["siamese/trt.py", "siamese/runtime.py", "siamese/deployed.py", "siamese/cuda_memory.py",
                 "onnx_to_trt.py", "infer_tensorrt.py", "eval_tensorrt.py"]:
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


def _script_build(onnx_model, tmp_path, monkeypatch, trt, *extra):
    import sys

    import onnx_to_trt
    import siamese.cuda_memory

    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(siamese.cuda_memory, "default_cuda", FakeCuda)
    engine = str(tmp_path / "m.engine")
    assert onnx_to_trt.main(["--onnx", onnx_model, "--engine", engine, "--max-batch", "4", "--opt-batch", "2",
                             *extra]) == 0
    return engine


def test_onnx_to_trt_builds_embedder_and_head_engines_that_embed_each_image_once(onnx_model, tiny_dataset, tmp_path,
                                                                                 monkeypatch, capsys):
    from siamese.contract import part_path
    from siamese.deployed import HEAD_BATCH

    trt = make_fake_tensorrt("10.9.0")
    engine = _script_build(onnx_model, tmp_path, monkeypatch, trt)
    assert "embed and head engines" in capsys.readouterr().out
    meta = json.load(open(engine + ".json"))
    assert meta["parts"] == {"embed": "m.embed.engine", "head": "m.head.engine"}
    for part in ("embed", "head"):
        part_meta = json.load(open(part_path(engine, part) + ".json"))
        assert part_meta["siamese.part"] == part and part_meta["siamese.fingerprint"] == meta["siamese.fingerprint"]
    assert json.load(open(part_path(engine, "head") + ".json"))["max_batch"] == HEAD_BATCH

    model = TensorRTModel(engine, trt=trt, cuda=FakeCuda())
    paths = scan_folder(tiny_dataset[1]).paths[:10]
    pairs = [(a, b) for i, a in enumerate(paths) for b in paths[i + 1:]]  # 45 pairs over 10 images
    reference = OnnxRuntimeModel(onnx_model).score_whole_pairs(pairs)
    trt.calls.clear()
    np.testing.assert_allclose(score_pairs(model, pairs), reference, atol=1e-5)
    # 10 images through the embedder in batches of 4, then one head call for the 45 pairs
    assert [c[1] for c in trt.calls if c[0] == "execute"] == [4, 4, 2, 45]
    assert model.embed(np.zeros((3, 3, 32, 32), np.float32)).shape == (3, 512)
    model.close()


def test_a_timing_cache_from_other_hardware_is_replaced_not_ignored(onnx_model, tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"made on another GPU")
    lines = []
    trt = make_fake_tensorrt("10.9.0", cache_from_other_hardware=True)
    _build(onnx_model, tmp_path, trt, timing_cache=str(cache), log=lines.append)
    assert any("did not accept the timing cache" in line for line in lines)
    assert cache.read_bytes() == b"timing-cache:"  # the fresh cache this build filled, not the stale one


def test_a_build_that_keeps_no_timing_cache_still_writes_engine_and_sidecar(onnx_model, tmp_path):
    cache = tmp_path / "timing.cache"
    engine, _ = _build(onnx_model, tmp_path, make_fake_tensorrt("10.9.0", keeps_no_timing_cache=True),
                       timing_cache=str(cache))
    assert os.path.isfile(engine) and os.path.isfile(engine + ".json") and not cache.exists()


def test_a_failed_sidecar_write_leaves_neither_file(onnx_model, tmp_path, monkeypatch):
    import errno

    import siamese.files

    real_replace = os.replace

    def failing_replace(source, target):
        if str(target).endswith(".json"):
            raise OSError(errno.EIO, "input/output error")
        return real_replace(source, target)

    monkeypatch.setattr(siamese.files.os, "replace", failing_replace)
    with pytest.raises(OSError):
        _build(onnx_model, tmp_path, make_fake_tensorrt("10.9.0"))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == []


def test_a_sidecar_of_another_build_is_refused(onnx_model, tmp_path):
    engine, _ = _build(onnx_model, tmp_path, make_fake_tensorrt("10.9.0"))
    meta = json.load(open(engine + ".json"))
    meta["engine_sha256"] = "0" * 64
    json.dump(meta, open(engine + ".json", "w"))
    with pytest.raises(UserError, match="describes another build than the engine"):
        TensorRTModel(engine, trt=make_fake_tensorrt("10.9.0"), cuda=FakeCuda())


def test_tensorrt_without_a_usable_gpu_at_load_is_one_line(onnx_model, tmp_path):
    engine, _ = _build(onnx_model, tmp_path, make_fake_tensorrt("10.9.0"))
    with pytest.raises(UserError, match="TensorRT cannot use a GPU on this machine"):
        TensorRTModel(engine, trt=make_fake_tensorrt("10.9.0", gpu_present=False), cuda=FakeCuda())


def test_an_engine_from_another_gpu_of_the_same_compute_capability_loads_with_a_warning(onnx_model, tiny_dataset,
                                                                                         tmp_path, capsys):
    engine, _ = _build(onnx_model, tmp_path, make_fake_tensorrt("10.9.0"))
    other = "Fake GPU Max (compute 9.0)"
    model = TensorRTModel(engine, trt=make_fake_tensorrt("10.9.0", current_gpu=other), cuda=FakeCuda(other))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:") and "Fake GPU (compute 9.0)" in err[0] and other in err[0]
    paths = scan_folder(tiny_dataset[1]).paths
    assert score_pairs(model, [(paths[0], paths[1])]).shape == (1,)


def test_a_sidecar_that_names_no_engine_hash_is_refused(onnx_model, tmp_path):
    """Without the engine's SHA-256 only its name would tie a sidecar to an engine."""
    engine, _ = _build(onnx_model, tmp_path, make_fake_tensorrt("10.9.0"))
    meta = json.load(open(engine + ".json"))
    del meta["engine_sha256"]
    json.dump(meta, open(engine + ".json", "w"))
    with pytest.raises(UserError, match="does not record the SHA-256 of the engine it describes"):
        TensorRTModel(engine, trt=make_fake_tensorrt("10.9.0"), cuda=FakeCuda())
