"""Shared helpers for the benchmarks: data to run on, timing, tables, JSON."""

import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_DATA = os.environ.get("BENCH_DATA", os.path.join(ROOT, "..", "shared", "data"))  # BENCH_DATA: elsewhere


def data_folder(name):
    """A real folder to benchmark on: ../shared/data/<name> if present, else the demo digits."""
    if name != "digits":
        dataset, split = name.split(":") if ":" in name else (name, "val")
        path = os.path.join(SHARED_DATA, dataset, split)
        if os.path.isdir(path):
            return os.path.abspath(path)
        print(f"({path} not found: using the demo digits)")
    from siamese.demo import build_digits_dataset

    root = os.path.join(tempfile.gettempdir(), "siamese-bench-digits")
    if not os.path.isdir(os.path.join(root, "val")):
        build_digits_dataset(root)
    return os.path.join(root, "val")


def timed(fn, repeat=1):
    """Best-of wall time of fn() in seconds, and its last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def machine():
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def report(title, rows, columns, out):
    """Print rows (list of dicts) as a table and write {title, machine, rows} to out as JSON."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump({"title": title, "machine": machine(), "rows": rows}, f, indent=2)
        print(f"(written to {out})")


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None else str(value)
