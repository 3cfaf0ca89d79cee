"""ONNX export of a trained network: inputs img1, img2 (N, 3, H, W) with one shared dynamic
batch dimension, output similarity (N, 1), and the preprocessing in the model's metadata so
every runtime configures itself from the file alone."""

import copy
import json
import logging
import os
import warnings

import numpy as np
import torch

from .errors import UserError
from .files import atomic_open
from .model import SimilarityModel
from .runtime import INPUT_NAMES, OUTPUT_NAME  # one definition of the deployed interface

DEFAULT_OPSET = 20


class _Float16Similarity(torch.nn.Module):
    """Half-precision weights and arithmetic behind float32 inputs and output, so runtimes
    feed the same arrays to FP32 and FP16 models."""

    def __init__(self, network):
        super().__init__()
        self.inner = SimilarityModel(copy.deepcopy(network)).half()  # the caller's network stays float32

    def forward(self, img1, img2):
        return self.inner(img1.half(), img2.half()).float()


def model_metadata(config, *, threshold, opset, fp16):
    """String key/values stored in the ONNX file (and beside a TensorRT engine)."""
    return {
        "siamese.format_version": "1",
        "siamese.backbone": config["backbone"],
        "siamese.features": config["features"],
        "siamese.image_size": str(config["image_size"]),
        "siamese.mean": json.dumps(list(config["mean"])),
        "siamese.std": json.dumps(list(config["std"])),
        "siamese.channel_order": "RGB",
        "siamese.layout": "NCHW",
        "siamese.threshold": "" if threshold is None else repr(float(threshold)),
        "siamese.opset": str(opset),
        "siamese.precision": "fp16" if fp16 else "fp32",
    }


def export_onnx(network, path, *, threshold=None, opset=DEFAULT_OPSET, fp16=False):
    """Export to one self-contained .onnx file (written atomically) with metadata; returns its metadata."""
    import onnx

    network = network.cpu().eval()  # eval: Dropout out of the graph, BatchNorm on running statistics
    module = (_Float16Similarity(network) if fp16 else SimilarityModel(network)).eval()
    size = network.config["image_size"]
    example = (torch.randn(2, 3, size, size), torch.randn(2, 3, size, size))
    batch = torch.export.Dim("batch", min=1, max=4096)
    tmp_path = path + ".partial"
    # A failed opset conversion is logged there with a traceback; it is reported below in one line.
    converter_log = logging.getLogger("onnxscript.version_converter")
    level = converter_log.level
    converter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")  # img1 and img2 share it
            program = torch.onnx.export(module, example, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                                        dynamic_shapes=({0: batch}, {0: batch}), opset_version=opset, dynamo=True,
                                        external_data=False, verbose=False)
        proto = program.model_proto
    except Exception as error:
        raise UserError(f"ONNX export of {network.config['backbone']} failed ({type(error).__name__}: "
                        f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); try another --opset") from None
    finally:
        converter_log.setLevel(level)
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if written != opset:  # torch.onnx keeps its own opset when it cannot convert, with only a logged warning
        raise UserError(f"torch.onnx could not convert {network.config['backbone']} to opset {opset} and would have "
                        f"written opset {written}; choose another --opset, such as {written} or the default "
                        f"{DEFAULT_OPSET}")
    for value in list(proto.graph.input) + list(proto.graph.output):
        if not value.type.tensor_type.shape.dim[0].dim_param:
            raise UserError(f"the exported '{value.name}' has a fixed batch size; this backbone cannot be exported "
                            f"with a dynamic batch")
    metadata = model_metadata(network.config, threshold=threshold, opset=opset, fp16=fp16)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    with atomic_open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return metadata


def check_against_pytorch(network, onnx_path, images1, images2, *, batch_sizes=(1, 5)):
    """Max |ONNX Runtime - PyTorch| over the given batch sizes, on the given preprocessed images."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    model = SimilarityModel(network.cpu().eval()).eval()
    worst = 0.0
    for n in batch_sizes:
        x1, x2 = images1[:n], images2[:n]
        if len(x1) < n:
            raise UserError(f"need {n} check images, got {len(x1)}")
        with torch.no_grad():
            expected = model(torch.from_numpy(x1), torch.from_numpy(x2)).numpy()
        got = session.run([OUTPUT_NAME], {"img1": x1, "img2": x2})[0]
        if got.shape != (n, 1):
            raise UserError(f"ONNX model returned shape {got.shape} for batch {n}, expected ({n}, 1)")
        worst = max(worst, float(np.abs(got.astype(np.float64) - expected).max()))
    return worst
