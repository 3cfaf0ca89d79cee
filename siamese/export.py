"""ONNX export of a trained network, in three self-contained files with the same metadata:

- the pair model (MODEL.onnx): inputs img1, img2 (N, 3, H, W) with one shared dynamic batch
  dimension, output similarity (N, 1): the original toolkit's contract;
- the embedder (MODEL.embed.onnx): images (N, 3, H, W) -> features (N, D);
- the head (MODEL.head.onnx): features1, features2 (N, D) -> similarity (N, 1).

The preprocessing is in each file's metadata, so every runtime configures itself from the file
alone, and a fingerprint of the weights ties the three together."""

import copy
import hashlib
import json
import logging
import warnings

import numpy as np
import torch

from .contract import PARTS, model_metadata  # one definition of the deployed interface
from .errors import UserError
from .files import atomic_open

DEFAULT_OPSET = 20


class _Part(torch.nn.Module):
    """One deployed part of a network. With fp16 the weights and arithmetic are half precision
    behind float32 inputs and outputs, so runtimes feed the same arrays to FP32 and FP16 models."""

    def __init__(self, network, fp16=False):
        super().__init__()
        self.network = copy.deepcopy(network).half() if fp16 else network  # the caller's network stays float32
        self.dtype = torch.float16 if fp16 else torch.float32


class _Pair(_Part):
    def forward(self, img1, img2):  # -> similarity (N, 1)
        return torch.sigmoid(self.network.pair_logits(img1.to(self.dtype), img2.to(self.dtype))).unsqueeze(1).float()


class _Embedder(_Part):
    def forward(self, images):  # -> features (N, D)
        return self.network.scoring_features(images.to(self.dtype)).float()


class _Head(_Part):
    def forward(self, features1, features2):  # -> similarity (N, 1)
        logits = self.network.scoring_logits(features1.to(self.dtype), features2.to(self.dtype))
        return torch.sigmoid(logits).unsqueeze(1).float()


_MODULES = {"pair": _Pair, "embed": _Embedder, "head": _Head}


def deployed_module(network, part, fp16=False):
    """The module exported as `part` (PARTS): the pair model, the embedder or the head, in eval mode."""
    return _MODULES[part](network, fp16).eval()


def fingerprint(network):
    """A short hash of the weights and preprocessing: files exported from one model share it, so
    parts (and later indexes) from another model are never mixed with them."""
    digest = hashlib.sha256(json.dumps(network.config, sort_keys=True).encode())
    for name, value in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _example_inputs(network, part):
    size, dim = network.config["image_size"], network.scoring_dim
    if part == "head":
        return (torch.randn(2, dim), torch.randn(2, dim))
    # distinct tensors: one tensor passed twice is traced as one input
    return tuple(torch.randn(2, 3, size, size) for _ in range(2 if part == "pair" else 1))


def export_onnx(network, path, *, threshold=None, opset=DEFAULT_OPSET, fp16=False, part="pair", model_fingerprint=None,
                export_id=None):
    """Export one part (PARTS) to one self-contained .onnx file (written atomically) with metadata;
    returns its metadata. export_id: the id shared by the parts of one export (contract.EXPORT_ID)."""
    import onnx

    network = network.cpu().eval()  # eval: Dropout out of the graph, BatchNorm on running statistics
    module = deployed_module(network, part, fp16)
    example = _example_inputs(network, part)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # A failed opset conversion is logged there with a traceback; it is reported below in one line.
    converter_log = logging.getLogger("onnxscript.version_converter")
    level = converter_log.level
    converter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")  # two inputs share it
            program = torch.onnx.export(module, example, input_names=list(PARTS[part][0]), output_names=[PARTS[part][1]],
                                        dynamic_shapes=tuple({0: batch} for _ in example), opset_version=opset,
                                        dynamo=True, external_data=False, verbose=False)
        proto = program.model_proto
    except Exception as error:
        raise UserError(f"ONNX export of {network.config['backbone']} failed ({type(error).__name__}: "
                        f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); try another --opset") from None
    finally:
        converter_log.setLevel(level)
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if written != opset:  # torch.onnx keeps its own opset when it cannot convert, with only a logged warning
        raise UserError(f"torch.onnx could not convert {network.config['backbone']} to opset {opset} and would have "
                        f"written opset {written}; choose another --opset, such as {written} or the default "
                        f"{DEFAULT_OPSET}")
    for value in list(proto.graph.input) + list(proto.graph.output):
        if not value.type.tensor_type.shape.dim[0].dim_param:
            raise UserError(f"the exported '{value.name}' has a fixed batch size; this backbone cannot be exported "
                            f"with a dynamic batch")
    metadata = model_metadata(network.config, threshold=threshold, opset=opset, fp16=fp16, part=part,
                              model_fingerprint=model_fingerprint or fingerprint(network), export_id=export_id)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    with atomic_open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return metadata


def _feeds(network, part, x1, x2):
    """The inputs of a part for a check: images, or for the head the images' features."""
    if part == "pair":
        return x1, x2
    if part == "embed":
        return (x1,)
    with torch.no_grad():
        return tuple(network.scoring_features(torch.from_numpy(x)).numpy() for x in (x1, x2))


def check_against_pytorch(network, onnx_path, images1, images2, *, batch_sizes=(1, 5), part="pair"):
    """Max |ONNX Runtime - PyTorch (float32)| over the given batch sizes, on the given preprocessed
    images; for the embedder relative to the features' largest magnitude (when above 1), so one
    tolerance fits similarities and features alike."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    network = network.cpu().eval()
    reference = deployed_module(network, part)
    names, output = PARTS[part]
    worst = 0.0
    for n in batch_sizes:
        x1, x2 = images1[:n], images2[:n]
        if len(x1) < n:
            raise UserError(f"need {n} check images, got {len(x1)}")
        feeds = _feeds(network, part, x1, x2)
        with torch.no_grad():
            expected = reference(*(torch.from_numpy(np.ascontiguousarray(x)) for x in feeds)).numpy().astype(np.float64)
        got = session.run([output], dict(zip(names, feeds)))[0]
        if got.shape != expected.shape:
            raise UserError(f"ONNX {part} model returned shape {got.shape} for batch {n}, expected {expected.shape}")
        scale = max(1.0, float(np.abs(expected).max())) if part == "embed" else 1.0
        worst = max(worst, float(np.abs(got.astype(np.float64) - expected).max()) / scale)
    return worst
