"""Training throughput (pairs/s) against the compute ceiling.

The ceiling is the same model, batch and image size doing forward + backward + optimizer step
on tensors already in memory; achieved is train_one_epoch on the real data loader (decoding,
augmentation, workers). Efficiency = achieved / ceiling, measured side by side.

    python bench/train_throughput.py --data omniglot:train --out bench/results/train.json
    python bench/train_throughput.py --device cuda --amp --channels-last --workers 8
"""

import argparse
import itertools
import time

import torch

from common import data_folder, report
from siamese.batch_augment import augments_on_device, on_device
from siamese.data import Augmentation, TrainingPairs, training_loader
from siamese.device import autocast, grad_scaler, resolve_device
from siamese.distributed import Context
from siamese.image_cache import image_cache
from siamese.images import scan_folder
from siamese.model import SiameseNetwork
from siamese.settings import TrainingSettings
from siamese.training import train_one_epoch

SETTINGS = {  # name: (batch size, image size, augmentation)
    "default (batch 32)": (32, 224, "full"),
    "original (batch 8)": (8, 224, "full"),
}


def ceiling_step(model, optimizer, scaler, batch, size, device, channels_last, amp):
    """One optimizer step on tensors already in memory (no data loading at all), as train.py's."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x1 = torch.randn(batch, 3, size, size, device=device).to(memory_format=memory_format)
    x2 = torch.randn(batch, 3, size, size, device=device).to(memory_format=memory_format)
    y = (torch.rand(batch, device=device) < 0.5).float()

    def step():
        model.train()
        with autocast(device, amp):
            logits = model(x1, x2)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def ceiling(step, batch, steps, device):
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # GPU work is queued: time it to the end
    return batch * steps / (time.perf_counter() - start)


def achieved(model, optimizer, scaler, iterator, steps, device, channels_last, amp):
    # train_one_epoch reads its loss sums back at the end, which waits for the GPU
    stats = train_one_epoch(model, itertools.islice(iterator, steps), optimizer, scaler=scaler,
                            settings=TrainingSettings(amp=amp, channels_last=channels_last), context=Context(device=device))
    return stats["pairs"] / stats["seconds"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="omniglot:train", help="DATASET[:split] under ../shared/data, or 'digits'")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--pairs", default=96, type=int, help="pairs timed per measurement")
    p.add_argument("--repeats", default=3, type=int, help="interleaved measurements of each; the best is kept")
    p.add_argument("--workers", default=2, type=int)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", action="store_true", help="mixed precision as train.py --amp (float16 on CUDA, bfloat16 on CPUs)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--out", default="bench/results/train_throughput.json")
    args = p.parse_args()
    folder = scan_folder(data_folder(args.data))
    device = resolve_device(args.device)
    rows = []
    for name, (batch, size, augment) in SETTINGS.items():
        torch.manual_seed(0)
        model = SiameseNetwork(args.backbone, image_size=size).to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        scaler = grad_scaler(device, args.amp)
        steps = max(2, args.pairs // batch)
        cache, _ = image_cache(folder.paths, model.preprocessing, budget_mb=TrainingSettings().cache_mb,
                               shared=args.workers > 0)  # as train.py: decoded once, on CUDA augmented there
        dataset = TrainingPairs(folder, model.preprocessing, seed=0, augmentation=Augmentation(augment), cache=cache,
                                uint8=augments_on_device(device),
                                pairs_per_image=(args.repeats * steps + 2) * batch // len(folder) + 1)
        loader = on_device(training_loader(dataset, batch_size=batch, workers=args.workers, device=device, seed=0),
                           dataset, device=device, seed=0)
        loader.sampler.set_epoch(1)
        iterator = iter(loader)
        step = ceiling_step(model, optimizer, scaler, batch, size, device, args.channels_last, args.amp)
        step()  # warm-up: kernels chosen, memory allocated
        achieved(model, optimizer, scaler, iterator, 1, device, args.channels_last, args.amp)  # warm-up: workers started
        # Interleaved and repeated, best of each: the two see the same machine state.
        tops, reals = [], []
        for _ in range(args.repeats):
            tops.append(ceiling(step, batch, steps, device))
            reals.append(achieved(model, optimizer, scaler, iterator, steps, device, args.channels_last, args.amp))
        top, real = max(tops), max(reals)
        rows.append({"setting": name, "backbone": args.backbone, "image_size": size, "batch": batch, "augment": augment,
                     "workers": args.workers, "device": str(device), "amp": args.amp,
                     "channels_last": args.channels_last, "ceiling_pairs_s": top, "achieved_pairs_s": real, "efficiency": real / top,
                     "ceiling_runs": tops, "achieved_runs": reals})
    report(f"Training throughput on {args.data} (pairs/s)", rows,
           ["setting", "image_size", "batch", "workers", "device", "amp", "channels_last", "ceiling_pairs_s", "achieved_pairs_s", "efficiency"], args.out)


if __name__ == "__main__":
    main()
