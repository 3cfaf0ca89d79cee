"""One query against a large gallery index: the FAISS shortlist and the head re-ranking it, beside
the head scoring the whole gallery. Synthetic features of the model's size (resnet18: 512), as
identify.py keeps them in its index; the head is resnet18's, on PyTorch and on ONNX Runtime.

    python bench/identify_search.py                      # 100,000 gallery images
    python bench/identify_search.py --gallery 1000000 --shortlist 200
"""

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from common import report
from siamese.export import export_onnx
from siamese.gallery import DEFAULT_SHORTLIST, Gallery, Shortlist, identify
from siamese.model import SiameseNetwork
from siamese.predict import TorchPredictor
from siamese.contract import part_path
from siamese.runtime import OnnxRuntimeModel


def best_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gallery", default=100_000, type=int, help="gallery images")
    p.add_argument("--classes", default=10_000, type=int)
    p.add_argument("--shortlist", default=DEFAULT_SHORTLIST, type=int)
    p.add_argument("--repeats", default=5, type=int)
    p.add_argument("--out", default="bench/results/identify_search.json")
    args = p.parse_args()
    torch.manual_seed(0)
    network = SiameseNetwork("resnet18", image_size=32).eval()
    dim = network.config["feature_dim"]
    rng = np.random.default_rng(0)
    # ReLU-pooled features are non-negative, as a resnet's are
    features = np.abs(rng.standard_normal((args.gallery, dim))).astype(np.float32)
    gallery = Gallery("synthetic", [str(c) for c in range(args.classes)], [f"{i}.png" for i in range(args.gallery)],
                      rng.integers(0, args.classes, args.gallery), features)
    query = np.abs(rng.standard_normal((1, dim))).astype(np.float32)
    torch_scorer = TorchPredictor(network)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        for part in ("pair", "embed", "head"):
            export_onnx(network, part_path(path, part), part=part)
        onnx_scorer = OnnxRuntimeModel(path, providers=["CPUExecutionProvider"])
        start = time.perf_counter()
        shortlist = Shortlist(gallery.features)
        build_s = time.perf_counter() - start
        gallery._shortlist = shortlist
        search_ms = best_ms(lambda: shortlist.search(query, args.shortlist), args.repeats)
        for name, scorer in (("PyTorch", torch_scorer), ("ONNX Runtime", onnx_scorer)):
            identify(scorer, gallery, query, shortlist=args.shortlist)  # warm-up
            rows.append({"method": f"FAISS shortlist of {args.shortlist} + head re-ranking ({name})",
                         "ms_per_query": best_ms(lambda: identify(scorer, gallery, query, shortlist=args.shortlist),
                                                 args.repeats)})
        for name, scorer in (("PyTorch", torch_scorer), ("ONNX Runtime", onnx_scorer)):
            rows.append({"method": f"head on the whole gallery ({name})",
                         "ms_per_query": best_ms(lambda: identify(scorer, gallery, query, shortlist=None),
                                                 max(1, args.repeats // 2))})
    rows.insert(0, {"method": f"FAISS search alone ({type(shortlist.index).__name__}, top {args.shortlist})",
                    "ms_per_query": search_ms})
    for row in rows:
        row["threads"] = torch.get_num_threads()
    print(f"{args.gallery:,} gallery images of {dim} float32 features: index {features.nbytes / 2**20:.0f} MiB in memory "
          f"(and as many in FAISS: {build_s:.2f} s to build, once per gallery)")
    report(f"One query against {args.gallery:,} gallery images", rows, ["method", "ms_per_query"], args.out)


if __name__ == "__main__":
    main()
