"""GPU suite: runs wherever CUDA (and for the engine tests, TensorRT) exist; skips elsewhere.

    make test-gpu
"""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN_ARGS
from siamese.scoring import score_pairs

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def _tensorrt_ready():
    if not torch.cuda.is_available() or importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        from siamese.cuda_memory import default_cuda

        default_cuda()
        return True
    except Exception:
        return False


needs_tensorrt = pytest.mark.skipif(not _tensorrt_ready(), reason="needs TensorRT, a CUDA GPU and cuda-python/pycuda")


@needs_cuda
def test_cuda_training_with_amp_and_channels_last(tiny_dataset, tmp_path):
    import train

    train_dir, val_dir = tiny_dataset
    args = list(TINY_TRAIN_ARGS)
    args[args.index("--device") + 1] = "cuda"
    out = str(tmp_path / "gpu")
    assert train.main(["--train_path", train_dir, "--val_path", val_dir, "-o", out, "-e", "2", "--amp",
                       "--channels-last", *args]) == 0
    checkpoint = torch.load(os.path.join(out, "last.pth"), weights_only=True)
    # bfloat16 from Ampere on needs no gradient scaler; float16 before it does
    assert (checkpoint["scaler"] is None) == (torch.cuda.get_device_capability() >= (8, 0))
    assert checkpoint["epoch"] == 2
    assert np.isfinite(checkpoint["metrics"]["train"]["loss"])


@needs_cuda
def test_cuda_evaluation_matches_cpu(tiny_dataset, trained_checkpoint):
    from siamese.checkpoint import load_model
    from siamese.images import scan_folder
    from siamese.pairs import evaluation_pairs
    from siamese.predict import TorchPredictor

    pairs = [(p.left, p.right) for p in evaluation_pairs(scan_folder(tiny_dataset[1]), seed=0)]
    cpu = score_pairs(TorchPredictor(load_model(trained_checkpoint)[0]), pairs)
    gpu = score_pairs(TorchPredictor(load_model(trained_checkpoint, device="cuda")[0], device="cuda"), pairs)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)


@needs_tensorrt
@pytest.mark.parametrize("fp16, tolerance", [(False, 1e-3), (True, 2e-2)])
def test_tensorrt_engine_matches_onnx_runtime(onnx_model, trained_checkpoint, tiny_dataset, tmp_path, fp16, tolerance):
    import eval_tensorrt
    import infer_tensorrt
    import onnx_to_trt
    import torch_to_onnx
    from siamese.images import scan_folder
    from siamese.runtime import OnnxRuntimeModel
    from siamese.trt import TensorRTModel

    source = onnx_model
    if fp16:  # an FP16 ONNX model serves both TensorRT 10 (flag) and 11 (strongly typed)
        source = str(tmp_path / "half.onnx")
        assert torch_to_onnx.main(["-c", trained_checkpoint, "-o", source, "--fp16", "--images", tiny_dataset[1]]) == 0
    engine = str(tmp_path / "model.engine")
    assert onnx_to_trt.main(["--onnx", source, "--engine", engine, "--max-batch", "8", *(["--fp16"] if fp16 else [])]) == 0
    paths = scan_folder(tiny_dataset[1]).paths
    pairs = [(paths[i], paths[-1 - i]) for i in range(len(paths))]
    deployed = TensorRTModel(engine)
    assert deployed.parts is not None  # the embedder and head engines were built beside it
    trt_scores = score_pairs(deployed, pairs)
    onnx_scores = score_pairs(OnnxRuntimeModel(onnx_model), pairs)
    assert np.abs(trt_scores - onnx_scores).max() < tolerance
    assert np.abs(deployed.score_whole_pairs(pairs) - trt_scores).max() < tolerance  # pair engine and parts agree
    assert infer_tensorrt.main(["--image1", paths[0], "--image2", paths[1], "--engine", engine]) == 0
    assert eval_tensorrt.main(["-v", tiny_dataset[1], "-o", str(tmp_path / "e"), "--engine", engine, "--workers", "0"]) == 0
    assert json.load(open(tmp_path / "e" / "metrics.json"))["pairs"] == len(paths) * (len(paths) - 1) // 2  # every pair


@needs_tensorrt
def test_int8_engine_matches_its_qdq_model_on_onnx_runtime(onnx_model, tiny_dataset, tmp_path):
    """The TensorRT copy of onnx_to_int8.py, built by onnx_to_trt.py into INT8 engines, scores as
    ONNX Runtime scores the same QDQ model (rounding may differ in a few places)."""
    import onnx_to_int8
    import onnx_to_trt
    from siamese.images import scan_folder
    from siamese.runtime import OnnxRuntimeModel
    from siamese.trt import TensorRTModel

    int8 = str(tmp_path / "model.int8.onnx")
    assert onnx_to_int8.main(["--onnx", onnx_model, "--calibration", tiny_dataset[0], "-o", int8, "--target", "tensorrt",
                              "--calibration-images", "8", "--check-images", "10", "--max-auc-drop", "1"]) == 0
    engine = str(tmp_path / "model.int8.engine")
    assert onnx_to_trt.main(["--onnx", int8, "-o", engine, "--max-batch", "8"]) == 0
    assert json.load(open(engine + ".json"))["precision"] == "int8"
    paths = scan_folder(tiny_dataset[1]).paths
    pairs = [(paths[i], paths[-1 - i]) for i in range(len(paths))]
    np.testing.assert_allclose(score_pairs(TensorRTModel(engine), pairs), score_pairs(OnnxRuntimeModel(int8), pairs),
                               atol=2e-2)


@needs_cuda
def test_onnx_runtime_on_cuda_embeds_and_scores_like_the_cpu(onnx_model, tiny_dataset):
    import onnxruntime

    from siamese.images import scan_folder
    from siamese.runtime import OnnxRuntimeModel

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("ONNX Runtime without its CUDA provider (pip install onnxruntime-gpu)")
    paths = scan_folder(tiny_dataset[1]).paths
    pairs = [(a, b) for i, a in enumerate(paths) for b in paths[i + 1:]]
    gpu = OnnxRuntimeModel(onnx_model, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert gpu.providers[0] == "CUDAExecutionProvider"
    cpu = OnnxRuntimeModel(onnx_model, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(score_pairs(gpu, pairs), score_pairs(cpu, pairs), atol=1e-3)


def _cuda_train(tiny_dataset, out, *extra):
    import train

    args = list(TINY_TRAIN_ARGS)
    args[args.index("--device") + 1] = "cuda"
    return train.main(["--train_path", tiny_dataset[0], "--val_path", tiny_dataset[1], "-o", str(out), *args, *extra])


@needs_cuda
def test_cuda_set_up_bfloat16_tf32_and_channels_last_from_ampere_on():
    from siamese import device as devices

    modern = torch.cuda.get_device_capability() >= (8, 0)
    assert devices.amp_dtype("cuda") == (torch.bfloat16 if modern else torch.float16)
    assert devices.grad_scaler("cuda", True).is_enabled() is not modern
    assert devices.configure_cuda("cuda", True) is modern and torch.backends.cudnn.benchmark
    assert devices.channels_last_for("cuda")


@needs_cuda
def test_cuda_compiled_training_keeps_plain_checkpoints_and_compiled_embedding_matches(tiny_dataset, trained_checkpoint,
                                                                                      tmp_path, capsys):
    from siamese import device as devices
    from siamese.checkpoint import load_model
    from siamese.images import scan_folder
    from siamese.predict import TorchPredictor

    out = tmp_path / "compiled"
    assert _cuda_train(tiny_dataset, out, "--compile", "--amp", "--ema", "0.9", "-e", "2") == 0
    assert "torch.compile: the first training step" in capsys.readouterr().out
    plain = set(load_model(trained_checkpoint)[0].state_dict())
    state = torch.load(out / "last.pth", weights_only=True)
    assert set(state["model"]) == plain and set(state["training_model"]) == plain
    assert np.isfinite(state["metrics"]["train"]["loss"])
    model = load_model(trained_checkpoint, device="cuda")[0]
    paths = scan_folder(tiny_dataset[1]).paths
    devices.configure_cuda("cuda", tf32=False)
    eager = TorchPredictor(model, device="cuda").embed_paths(paths)
    compiled = TorchPredictor(model, device="cuda", compile=True, batch_size=8).embed_paths(paths)
    np.testing.assert_allclose(compiled, eager, rtol=1e-3, atol=1e-3)
    half = TorchPredictor(model, device="cuda", amp=True).embed_paths(paths)
    np.testing.assert_allclose(half, eager, rtol=5e-2, atol=5e-2)
