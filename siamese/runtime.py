"""Deployed models: one interface over ONNX Runtime and TensorRT. No torch here.

    model = load_deployed_model("model.onnx")        # or "model.engine"
    model.preprocessing.load("a.png")                # the training code's evaluation transform
    model.predict(batch1, batch2)                    # (N, 3, H, W) float32 each -> (N,) similarity
    model.embed(batch)                               # (N, 3, H, W) -> (N, D) features
    model.score_features(features1, features2)       # (N, D) each -> (N,) similarity
    score_pairs(model, [(path_a, path_b), ...])      # siamese.scoring: each image embedded once

An export is three files: MODEL.onnx (the pair model: the original toolkit's contract), and
MODEL.embed.onnx and MODEL.head.onnx (engines likewise: MODEL.engine, MODEL.embed.engine,
MODEL.head.engine). The parts are loaded on first use; an export without them still works, every
pair through the pair model.

Everything a runtime needs (image size, normalisation, threshold) comes from the model file's
metadata, or for a TensorRT engine from the ENGINE.json written beside it.
"""

import os

import numpy as np

from .contract import (PARTS, check_interface, engine_metadata_path, feature_dim, onnx_metadata, parse_metadata,
                       part_of, tensor_shapes)
from .deployed import HEAD_BATCH, DeployedModel, Part
from .errors import UserError, check_batch_size, import_optional
from .images import is_image_file
from .trt import TensorRTModel


class _OnnxPart(Part):
    def __init__(self, path, part, *, providers, batch_size, busy_wait=True):
        onnxruntime = import_optional("onnxruntime", "running an .onnx model needs ONNX Runtime: pip install onnxruntime "
                                                     "(or onnxruntime-gpu)")
        available = onnxruntime.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            options = onnxruntime.SessionOptions()
            if not busy_wait:  # see load_deployed_model
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = onnxruntime.InferenceSession(path, options, providers=providers)
        except Exception as error:
            raise UserError(f"ONNX Runtime cannot load '{path}' ({str(error).strip().splitlines()[0][:200]}); "
                            f"give an .onnx file written by torch_to_onnx.py") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.preprocessing, self.threshold, self.metadata = parse_metadata(meta, path)
        self.part, self.files = part_of(meta, path), (path,)
        if self.part != part:
            raise UserError(f"'{path}' is the {self.part} part of an export, not the {part} model; give the model's "
                            f".onnx file (the one without .embed or .head in its name)")
        size = self.preprocessing.image_size
        dim = feature_dim(meta, path) if part != "pair" else None

        def shape(value):  # symbolic dimensions (the batch) as None
            return [d if isinstance(d, int) else None for d in value.shape]

        check_interface({i.name: shape(i) for i in self.session.get_inputs()},
                        {o.name: shape(o) for o in self.session.get_outputs()}, size, path, part, dim)
        self.shapes = tensor_shapes(part, size, dim)
        self.providers = self.session.get_providers()
        # On 2 CPU cores, batches of 4 to 64 pairs ran equally fast; unlike PyTorch, ONNX Runtime's
        # embedder was fastest at batch 64 at every size (resnet18: 61 images/s against 57 at batch 8
        # at 224 px, 673 against 548 at 64 px).
        default = {"pair": 64, "embed": 64, "head": HEAD_BATCH}[part]
        self.max_batch = batch_size or default

    def run_batch(self, feeds):
        arrays = {name: np.ascontiguousarray(array, np.float32) for name, array in feeds.items()}
        return self.session.run([PARTS[self.part][1]], arrays)[0].astype(np.float32, copy=False)

class OnnxRuntimeModel(DeployedModel):
    def __init__(self, path, *, providers=None, batch_size=None, part_paths=None, busy_wait=True):
        check_batch_size(batch_size)
        self.providers_asked, self.batch_size, self.busy_wait = providers, batch_size, busy_wait
        super().__init__(path, part_paths=part_paths)
        self.providers = self.pair.providers

    def open_part(self, path, part):
        # --batch-size sets the images per call (pairs for the pair model); the head keeps its own batches
        return _OnnxPart(path, part, providers=self.providers_asked, batch_size=self.batch_size if part != "head" else None,
                         busy_wait=self.busy_wait)

    def read_metadata(self, path, part):
        return onnx_metadata(path)


MODEL_FILES = "an .onnx file (run by ONNX Runtime) or a TensorRT engine (.engine or .plan, its .json beside it)"
ENGINE_SUFFIXES = (".engine", ".plan")


def load_deployed_model(path, *, batch_size=None, busy_wait=True):
    """An .onnx file (or an ONNX model under another name) runs on ONNX Runtime; an .engine or .plan
    file, or any file with an engine's .json beside it, on TensorRT; anything else is named for what
    it is, with what -m expects. busy_wait=False: ONNX Runtime's threads sleep between calls instead of spinning, for a process
    that does other work on the same cores (serve.py: on 2 CPU cores, 193 /verify requests/s
    against 138 with spinning threads)."""
    if not path or not os.path.exists(path):
        raise UserError(f"model file '{path}' does not exist; -m expects {MODEL_FILES}")
    if os.path.isdir(path):
        raise UserError(f"model '{path}' is a folder; -m expects {MODEL_FILES}, not the folder that holds one")
    with open(path, "rb") as f:
        head = f.read(4096)
    if path.lower().endswith(".onnx"):
        return OnnxRuntimeModel(path, batch_size=batch_size, busy_wait=busy_wait)
    if head[:1] == b"\x08" and b"pytorch" in head:  # an ONNX protobuf under another name
        return OnnxRuntimeModel(path, batch_size=batch_size, busy_wait=busy_wait)
    if head[:2] == b"PK" or b"format_version" in head[:200]:
        raise UserError(f"'{path}' looks like a PyTorch checkpoint; export it first with torch_to_onnx.py")
    if not path.lower().endswith(ENGINE_SUFFIXES) and not os.path.isfile(engine_metadata_path(path)):
        what = "an image" if is_image_file(os.path.basename(path)) else "neither an ONNX model nor a TensorRT engine"
        raise UserError(f"model '{path}' is {what}; -m expects {MODEL_FILES}")
    if batch_size is not None:
        raise UserError(f"--batch-size applies to .onnx files on ONNX Runtime; the batches of the engine '{path}' were "
                        f"fixed when it was built (onnx_to_trt.py --max-batch): leave --batch-size out")
    return TensorRTModel(path)
