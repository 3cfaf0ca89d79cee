"""The scorer (see scoring.py) for the model a command is given: a deployed model (-m: an ONNX
export, its INT8 copy or a TensorRT engine, no torch) or a checkpoint (-c: PyTorch, imported only
then). identify.py and serve.py load their models here."""


def load_scorer(engine=None, checkpoint=None, *, batch_size=None, busy_wait=True, **pytorch):
    """(scorer, the model's calibrated threshold or None). A deployed model must have its
    embedder and head (checked here, in one line, before any work); busy_wait: see
    runtime.load_deployed_model. `pytorch`: a checkpoint's options, as add_pytorch_options names
    them (device, amp, compile, tf32, channels_last)."""
    if engine:
        from .runtime import load_deployed_model

        model = load_deployed_model(engine, batch_size=batch_size, busy_wait=busy_wait)
        model.require_parts()  # an older export without embedder and head: one line, before any work
        return model, model.threshold
    from .checkpoint import load_model
    from .device import configure_cuda, resolve_device
    from .predict import TorchPredictor

    device = resolve_device(pytorch.get("device", "auto"))
    network, saved = load_model(checkpoint, device=device)
    configure_cuda(device, pytorch.get("tf32", True))
    return TorchPredictor(network, device=device, batch_size=batch_size, workers=4,  # 4 decoders on a GPU
                          amp=pytorch.get("amp", False), channels_last=pytorch.get("channels_last"),
                          compile=pytorch.get("compile", False)), saved.get("threshold")
