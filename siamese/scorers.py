"""The scorer (see scoring.py) for the model a command is given: a deployed model (-m: an ONNX
export, its INT8 copy or a TensorRT engine, no torch) or a checkpoint (-c: PyTorch, imported only
then). identify.py and serve.py load their models here."""


def load_scorer(engine=None, checkpoint=None, *, batch_size=None, device="auto", amp=False, compile=False, tf32=True):
    """(scorer, the model's calibrated threshold or None). A deployed model must have its
    embedder and head (checked here, in one line, before any work)."""
    if engine:
        from .runtime import load_deployed_model

        model = load_deployed_model(engine, batch_size=batch_size)
        model.require_parts()  # an older export without embedder and head: one line, before any work
        return model, model.threshold
    from .checkpoint import load_model
    from .distributed import configure_cuda, resolve_device
    from .predict import TorchPredictor

    device = resolve_device(device)
    network, saved = load_model(checkpoint, device=device)
    configure_cuda(device, tf32)
    return TorchPredictor(network, device=device, batch_size=batch_size, workers=4, amp=amp,  # 4 decoders on a GPU
                          compile=compile), saved.get("threshold")
