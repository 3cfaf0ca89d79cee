"""What identify.py's FAISS shortlist costs in rank-1: every image of a folder a query against all
the others (leave-one-out), ranked by the head on every image and by the head on a shortlist of
the nearest by cosine (exact, and inverted-file as used beyond 50,000 images).

    python bench/shortlist_rank1.py -c runs/cv_omniglot/fold_1/last.pth \\
        --data ../shared/data/omniglot/train ../shared/data/omniglot/val --held-out runs/cv_omniglot/fold_1/result.json
"""

import argparse
import json

import numpy as np

from common import report
from siamese.checkpoint import load_model
from siamese.gallery import DEFAULT_SHORTLIST, Shortlist
from siamese.scoring import similarity_matrix
from siamese.images import merge_folders, scan_folder
from siamese.predict import TorchPredictor


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-c", "--checkpoint", required=True)
    p.add_argument("--data", required=True, nargs="+", help="folders in the ROOT/ClassName/image layout")
    p.add_argument("--held-out", default=None, help="a crossval.py fold's result.json: only its held-out classes")
    p.add_argument("--shortlist", default=DEFAULT_SHORTLIST, type=int)
    p.add_argument("--out", default="bench/results/shortlist_rank1.json")
    args = p.parse_args()
    folder = merge_folders([scan_folder(path) for path in args.data])
    if args.held_out:
        folder = folder.subset(json.load(open(args.held_out))["held_out"])
    model, _ = load_model(args.checkpoint)
    predictor = TorchPredictor(model)
    labels = np.asarray(folder.labels)
    n = len(labels)
    features = predictor.embed_paths(folder.paths, progress=True)
    similarity = similarity_matrix(predictor, features, np.arange(n), np.arange(n))
    np.fill_diagonal(similarity, -np.inf)
    rows = [{"ranking": "the head on every other image", "rank1": float(np.mean(labels[similarity.argmax(1)] == labels))}]
    for name, exact_up_to in (("exact", 10**12), ("inverted-file", 0)):
        Shortlist.EXACT_UP_TO = exact_up_to
        found = Shortlist(features).search(features, args.shortlist + 1)
        right = 0
        for q in range(n):
            candidates = [r for r in found[q] if r != q and r >= 0][:args.shortlist]
            right += labels[candidates[int(np.argmax(similarity[q, candidates]))]] == labels[q]
        rows.append({"ranking": f"the head on a shortlist of {args.shortlist} ({name} FAISS search)", "rank1": right / n})
    report(f"Rank-1 over {n} images of {len(folder.classes)} classes, leave-one-out", rows, ["ranking", "rank1"], args.out)


if __name__ == "__main__":
    main()
