"""The service under load: K concurrent clients over loopback (httpx) send N /verify (or
/identify) requests to a serve.py process; requests/s, pairs/s, p50/p95/p99 latency and errors,
beside the offline ceiling of the same model measured in the same run (DeployedModel.embed at its
best batch plus the head, as pairs/s) and the latency of one direct predict call. --soak: N
requests (10,000 by default) with one in ten malformed: the 5xx count and the server's resident
memory after the warm-up and after the soak.

    python bench/serve.py -m runs/demo/model.onnx --clients 1 32 --requests 2000
    python bench/serve.py -m runs/demo/model.onnx --soak --out bench/results/serve_soak.json
"""

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx
import numpy as np

from common import ROOT, data_folder, report
from siamese.images import scan_folder
from siamese.runtime import load_deployed_model

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)


def offline(model_path, images, runs=5):
    """(the best pairs/s of embed + head over BATCHES, that batch, median seconds of one predict call)."""
    model = load_deployed_model(model_path)
    arrays = np.stack([model.preprocessing.load(p) for p in images[:2 * max(BATCHES)]])
    while len(arrays) < 2 * max(BATCHES):
        arrays = np.concatenate([arrays, arrays])
    best = (0.0, 1)
    for batch in BATCHES:
        pairs = arrays[:2 * batch]

        def step():
            features = model.embed(pairs)
            model.score_features(features[:batch], features[batch:])

        step()
        seconds = min(_seconds(step) for _ in range(runs))
        best = max(best, (batch / seconds, batch))
    one = [_seconds(lambda: model.predict(arrays[:1], arrays[1:2])) for _ in range(20 * runs)]
    model.close()
    return best[0], best[1], statistics.median(one)


def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def start_server(args):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, os.path.join(ROOT, "serve.py"), "-m", args.model, "--port", str(port),
               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--access-log" if args.access_log else "--no-access-log"]
    if args.gallery:
        command += ["--gallery", args.gallery]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"serve.py ended with {process.returncode}; run it by hand to see why")
        time.sleep(0.1)
    raise SystemExit("serve.py did not become ready in 60 s")


def bad_request(i, good):
    """One of the malformed requests of the soak (all 4xx)."""
    kinds = [{"image1": good, "image2": b"not an image"}, {"image1": good, "image2": good[:len(good) // 2]},
             {"image1": good}, {"image1": good, "image2": good, "threshold": b"nan"}]
    return {name: (name, data) for name, data in kinds[i % len(kinds)].items()}


async def load(url, endpoint, files, clients, requests, bad_every=0):
    """Latencies (s) of the good requests, and the count of answers by status class."""
    latencies, counts, next_one = [], {}, iter(range(requests))

    async def client(http):
        for i in next_one:
            bad = bad_every and i % bad_every == bad_every - 1
            body = bad_request(i, files[i % len(files)]["image1"]) if bad else \
                {k: (k, v) for k, v in files[i % len(files)].items() if endpoint == "/verify" or k == "image1"}
            if endpoint == "/identify" and not bad:
                body = {"image": ("image", body["image1"][1])}
            start = time.perf_counter()
            try:
                status = (await http.post(endpoint, files=body)).status_code
            except httpx.HTTPError:
                status = "transport"
            if not bad and status == 200:
                latencies.append(time.perf_counter() - start)
            key = f"{status // 100}xx" if isinstance(status, int) else status
            counts[key] = counts.get(key, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies, counts, time.perf_counter() - start


def resident_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def load_rows(args, url, files, ceiling, direct):
    rows = []
    for clients in args.clients:
        asyncio.run(load(url, args.endpoint, files, clients, min(200, args.requests)))  # warm-up
        latencies, counts, seconds = asyncio.run(load(url, args.endpoint, files, clients, args.requests))
        ok = counts.get("2xx", 0)
        q = np.percentile(latencies, [50, 95, 99]) * 1000 if latencies else [float("nan")] * 3
        rows.append({"endpoint": args.endpoint, "clients": clients, "requests": args.requests,
                     "requests_s": ok / seconds, "p50_ms": q[0], "p95_ms": q[1], "p99_ms": q[2],
                     "errors": args.requests - ok, "direct_predict_ms": direct * 1000,
                     "p50_minus_direct_ms": q[0] - direct * 1000, "ceiling_pairs_s": ceiling,
                     "vs_ceiling": ok / seconds / ceiling if args.endpoint == "/verify" else None})
    return rows


def soak_rows(args, url, process, files):
    asyncio.run(load(url, "/verify", files, 8, 500, bad_every=10))  # warm-up
    before = resident_mib(process.pid)
    _, counts, seconds = asyncio.run(load(url, "/verify", files, 8, args.requests, bad_every=10))
    after = resident_mib(process.pid)
    return [{"requests": args.requests, "malformed": args.requests // 10, "2xx": counts.get("2xx", 0),
             "4xx": counts.get("4xx", 0), "5xx": counts.get("5xx", 0), "transport": counts.get("transport", 0),
             "seconds": seconds, "rss_warm_mib": before, "rss_after_mib": after, "rss_growth": after / before - 1}]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", default=os.path.join(ROOT, "runs", "demo", "model.onnx"),
                   help="a deployed model (default: the demo's; make demo writes it)")
    p.add_argument("--images", default="digits", help="images to send: a folder of ../shared/data, or the demo digits")
    p.add_argument("--gallery", default=None, help="a gallery for --endpoint /identify")
    p.add_argument("--endpoint", default="/verify", choices=["/verify", "/identify"])
    p.add_argument("--clients", default=[1, 32], type=int, nargs="+", help="concurrent clients, one row each")
    p.add_argument("--requests", default=None, type=int, help="requests per row (default 2000; 10,000 with --soak)")
    p.add_argument("--max-batch", default=32, type=int)
    p.add_argument("--max-wait-ms", default=2.0, type=float)
    p.add_argument("--soak", action="store_true", help="one in ten requests malformed; 5xx and resident memory")
    p.add_argument("--access-log", action="store_true", help="the server logs a line per request (default: off, as behind a proxy that logs)")
    p.add_argument("--out", default=None, help="JSON results (default: bench/results/serve[_soak].json)")
    args = p.parse_args()
    if not os.path.isfile(args.model):
        raise SystemExit(f"model '{args.model}' does not exist: run `make demo`, or give -m")
    args.requests = args.requests or (10_000 if args.soak else 2000)
    folder = args.images if os.path.isdir(args.images) else data_folder(args.images)
    paths = scan_folder(folder, for_pairs=False).paths
    files = [{"image1": open(a, "rb").read(), "image2": open(b, "rb").read()} for a, b in zip(paths[::2], paths[1::2])][:200]
    ceiling, best_batch, direct = offline(args.model, paths)
    print(f"offline ceiling: {ceiling:.0f} pairs/s (embed + head at {best_batch} pairs); one predict call "
          f"{direct * 1000:.2f} ms")
    process, url = start_server(args)
    try:
        rows = soak_rows(args, url, process, files) if args.soak else load_rows(args, url, files, ceiling, direct)
    finally:
        process.terminate()
        process.wait(60)
    name = "serve_soak" if args.soak else "serve"
    columns = list(rows[0])
    report(f"serve.py {'soak' if args.soak else args.endpoint} ({os.path.basename(args.model)}, exit "
           f"{process.returncode})", rows, columns, args.out or os.path.join(ROOT, "bench", "results", f"{name}.json"))


if __name__ == "__main__":
    main()
