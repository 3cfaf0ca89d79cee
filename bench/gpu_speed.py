"""The GPU's figures side by side, in one process: the hardware ceiling of the model on tensors
already on the device (training steps at batch 32 and 256, float32/TF32 and bfloat16, compiled;
embedding at the embedding batch), the training loader alone, train.py's real throughput
(siamese.training.fit, as train.py calls it) at the defaults and at the recommended GPU flags,
with each epoch's fixed cost (validation, checkpoints), and embedding (TorchPredictor, as
eval.py and identify.py) against its ceiling.

Runs on a CPU too, at a tiny size, to check the script:
    DEVICE=cpu SIZE=32 SMALL=4 LARGE=8 STEPS=2 EPOCHS=2 IMAGES=64 python bench/gpu_speed.py
On a GPU (bench/gpu.sh):
    python bench/gpu_speed.py --out bench/results/gpu/speed.json
"""

import argparse
import os
import tempfile
import time

import torch

from common import data_folder, report
from siamese import device as devices
from siamese.data import ImageFiles, TrainingPairs, loader_options, training_loader
from siamese.images import scan_folder
from siamese.model import SiameseNetwork
from siamese.predict import TorchPredictor
from siamese.settings import TrainingSettings
from siamese.training import fit


def env(name, default):
    return type(default)(os.environ.get(name, default))


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn, items, steps, device, warmup=2):
    """Items per second of fn() over `steps` calls, after `warmup` calls (compiling, cuDNN's choice)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return items * steps / (time.perf_counter() - start)


def train_step(model, batch, size, device, amp):
    """A training step on device tensors (model: the network or its compiled form)."""
    x = torch.randn(2 * batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    y = (torch.rand(batch, device=device) < 0.5).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        with devices.autocast(device, amp):
            logits = model(x[:batch], x[batch:])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def network(size, device):
    torch.manual_seed(0)
    return SiameseNetwork("resnet18", image_size=size).to(device).to(memory_format=torch.channels_last)


def ceilings(args, device):
    """{name: pairs/s (training) or images/s (embedding)} on device tensors."""
    out = {}
    for batch, amp, compiled in ((args.small, False, False), (args.small, True, False), (args.large, False, False),
                                 (args.large, True, False), (args.large, True, True)):
        if compiled and not args.compile:
            continue
        model = network(args.size, device).train()
        module = torch.compile(model) if compiled else model
        start = time.perf_counter()
        name = f"ceiling train b{batch} {'bf16' if amp else 'fp32/tf32'}{' compiled' if compiled else ''}"
        out[name] = rate(train_step(module, batch, args.size, device, amp), batch, args.steps, device)
        if compiled:
            print(f"({name}: compiling and timing took {time.perf_counter() - start:.0f} s)")
    model = network(args.size, device).eval()
    images = torch.randn(args.embed_batch, 3, args.size, args.size, device=device).to(memory_format=torch.channels_last)
    with torch.inference_mode(), devices.autocast(device, True):
        out["ceiling embed bf16"] = rate(lambda: model.scoring_features(images), args.embed_batch, args.steps, device)
    return out


def loader_rates(args, device, train_folder, paths):
    """Images/s of the training loader (decoding, augmenting) and of the embedding loader alone."""
    model = network(args.size, torch.device("cpu"))
    dataset = TrainingPairs(train_folder, model.preprocessing, seed=0, pairs_per_image=args.pairs_per_image)
    loader = training_loader(dataset, batch_size=args.small, workers=args.workers, device=device, seed=0)
    loader.sampler.set_epoch(1)
    out = {}
    for name, batches in (("loader train (images/s)", loader),
                          ("loader embed (images/s)", torch.utils.data.DataLoader(
                              ImageFiles(paths, model.preprocessing), batch_size=args.embed_batch,
                              **dict(loader_options(workers=args.workers, device=device), persistent_workers=False)))):
        start, images = time.perf_counter(), 0
        for batch in batches:
            images += sum(len(t) for t in (batch[:2] if isinstance(batch, (list, tuple)) else [batch]))
        out[name] = images / (time.perf_counter() - start)
    return out


def training_rates(args, device, train_path, val_path, name, **flags):
    """fit() as train.py runs it: training pairs/s, and pairs/s and fixed seconds per whole epoch."""
    stamps = []

    def log(line):
        if line.startswith("epoch "):
            stamps.append(time.perf_counter())
        elif "torch.compile" in line:
            print(f"({name}: {line})")

    settings = TrainingSettings(weights="none", image_size=args.size, batch_size=args.small, epochs=args.epochs, device=str(device),
                                pairs_per_image=args.pairs_per_image, **flags)
    with tempfile.TemporaryDirectory() as out:
        fit(settings, train=train_path, val=val_path, out_path=out, log=log)
        import csv

        rows = list(csv.DictReader(open(os.path.join(out, "metrics.csv"))))
    later = rows[1:]  # the first epoch starts workers and compiles
    pairs = sum(float(r["pairs_per_second"]) * float(r["seconds"]) for r in later)
    train_seconds = sum(float(r["seconds"]) for r in later)
    wall = stamps[-1] - stamps[0]
    return {f"train.py {name} (training pairs/s)": pairs / train_seconds,
            f"train.py {name} (pairs/s per whole epoch)": pairs / wall,
            f"train.py {name} (fixed s per epoch)": (wall - train_seconds) / len(later)}


def embedding_rate(args, device, paths):
    model = network(args.size, device)
    predictor = TorchPredictor(model, device=device, amp=True, workers=args.workers, batch_size=args.embed_batch)
    predictor.embed_paths(paths[:args.embed_batch])  # warm-up: cuDNN's choice
    start = time.perf_counter()
    predictor.embed_paths(paths)
    return {"embed TorchPredictor bf16 (images/s)": len(paths) / (time.perf_counter() - start)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=env("DATA", "orl_faces"), help="dataset under ../shared/data with train/ and val/")
    p.add_argument("--device", default=env("DEVICE", "cuda"))
    p.add_argument("--size", type=int, default=env("SIZE", 224))
    p.add_argument("--small", type=int, default=env("SMALL", 32), help="the default batch")
    p.add_argument("--large", type=int, default=env("LARGE", 256), help="a batch that fills a big GPU")
    p.add_argument("--embed-batch", type=int, default=env("EMBED_BATCH", 256))
    p.add_argument("--steps", type=int, default=env("STEPS", 20), help="timed steps per ceiling")
    p.add_argument("--epochs", type=int, default=env("EPOCHS", 4))
    p.add_argument("--pairs-per-image", type=int, default=env("PAIRS_PER_IMAGE", 1))
    p.add_argument("--images", type=int, default=env("IMAGES", 20000), help="images embedded (the folder's, repeated)")
    p.add_argument("--workers", type=int, default=env("WORKERS", 8))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=bool(env("COMPILE", 1)))
    p.add_argument("--out", default=env("OUT", "bench/results/gpu") + "/speed.json")
    args = p.parse_args()
    device = devices.resolve_device(args.device)
    devices.configure_cuda(device)
    train_path, val_path = data_folder(f"{args.data}:train"), data_folder(f"{args.data}:val")
    folder = scan_folder(train_path)
    paths = (folder.paths * (args.images // len(folder.paths) + 1))[:args.images]
    figures = ceilings(args, device)
    figures.update(loader_rates(args, device, folder, paths))
    figures.update(training_rates(args, device, train_path, val_path, "defaults"))
    recommended = dict(amp=True, workers=args.workers)
    figures.update(training_rates(args, device, train_path, val_path, "--amp --workers N", **recommended))
    if args.compile:
        figures.update(training_rates(args, device, train_path, val_path, "--amp --workers N --compile",
                                      compile=True, **recommended))
    figures.update(embedding_rate(args, device, paths))
    report(f"GPU speed on {device} ({args.data}, {args.size} px, training batch {args.small}, embedding batch "
           f"{args.embed_batch})", fractions(figures, args.small), ["measure", "value", "against", "fraction"], args.out)


def fractions(figures, small):
    """Rows: each figure beside the ceiling it is measured against (the loaders against the
    images/s the bfloat16 step and embedding consume)."""
    fp32, bf16 = figures[f"ceiling train b{small} fp32/tf32"], figures[f"ceiling train b{small} bf16"]
    embed = figures["ceiling embed bf16"]
    against = {"loader train": ("2 x ceiling b%d bf16" % small, 2 * bf16), "loader embed": ("ceiling embed bf16", embed),
               "embed ": ("ceiling embed bf16", embed)}
    rows = []
    for name, value in figures.items():
        label, top = next((v for k, v in against.items() if name.startswith(k)), (None, None))
        if name.startswith("train.py") and "pairs/s" in name:
            label, top = ("ceiling b%d bf16" % small, bf16) if "--amp" in name else ("ceiling b%d fp32/tf32" % small, fp32)
        rows.append({"measure": name, "value": value, "against": label, "fraction": value / top if top else None})
    return rows


if __name__ == "__main__":
    main()
