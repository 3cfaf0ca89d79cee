"""Identify images against a gallery of known entities: for each query, the most similar classes
of the gallery, or 'unknown'.

Example:
    python identify.py --gallery data/gallery --query crops/ -c runs/exp1/best.pth -o runs/exp1/identify
    python identify.py --gallery data/gallery --query one.png -m runs/exp1/model.onnx   # or a TensorRT engine

The gallery is a folder per class (ROOT/ClassName/image.png); a query is an image file or a
folder of images (any depth). Each class is scored by its best gallery image. With -o: matches.csv
(query, rank, class, gallery image, similarity, verdict), matches.json, a picture per query, and
the gallery index (its features, reused while the gallery and the model are unchanged).
"""

import contextlib
import os

from siamese.options import add_model_option, add_out_option, script_parser
from siamese.errors import UserError, cli

PRINTED_QUERIES = 20  # one line each up to this many queries, a progress bar beyond


def get_args_parser():
    p = script_parser(__doc__)
    p.add_argument("--gallery", required=True, type=str, help="folder of known entities: ROOT/ClassName/image")
    p.add_argument("--query", required=True, type=str, help="an image file, or a folder of images (any depth)")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("-c", "--checkpoint", type=str, help="a .pth written by train.py (runs on PyTorch)")
    add_model_option(model)
    add_out_option(p, default=None,
                   help="folder for matches.csv, matches.json, pictures/ and the gallery index")
    p.add_argument("--top-k", default=5, type=int, help="classes listed per query")
    p.add_argument("--threshold", default=None, type=float,
                   help="'unknown' when the best similarity is below this (default: the model's calibrated threshold, "
                        "else 0.5)")
    p.add_argument("--index", default=None, type=str,
                   help="the gallery index file (default: OUT/gallery_index.npz with -o, else none: the gallery is "
                        "embedded every time)")
    p.add_argument("--shortlist", default="auto", type=str,
                   help="gallery images proposed by FAISS (cosine of the features) for the head to re-rank; 0: the head "
                        "scores the whole gallery; auto: the whole gallery up to 20,000 images, else 200")
    p.add_argument("--json", action="store_true", help="print the matches as JSON instead of text")
    p.add_argument("--max-pictures", default=50, type=int, help="write at most this many query pictures (with -o)")
    p.add_argument("--device", default="auto", type=str, help="with -c: auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", default=None, type=int, help="images per batch when embedding")
    return p


def query_files(path):
    """The query images: the file, or every image under the folder (sorted)."""
    from siamese.images import check_image, class_images

    if not os.path.exists(path):
        raise UserError(f"query '{path}' does not exist; give an image file or a folder of images")
    if os.path.isfile(path):
        check_image(path)
        return [path]
    found = class_images(path)  # every image under the folder, as a class folder's are found
    if not found:
        raise UserError(f"query folder '{path}' holds no images")
    for file in found:
        check_image(file)
    return sorted(found)


def load_scorer(args):
    """(model for the gallery functions, calibrated threshold or None)."""
    if args.engine:
        from siamese.runtime import load_deployed_model

        model = load_deployed_model(args.engine, batch_size=args.batch_size)
        model._need_parts()  # an older export without embedder and head: one line, before any work
        return model, model.threshold
    from siamese.checkpoint import load_model
    from siamese.distributed import resolve_device
    from siamese.predict import TorchPredictor

    device = resolve_device(args.device)
    network, checkpoint = load_model(args.checkpoint, device=device)
    return TorchPredictor(network, device=device, batch_size=args.batch_size), checkpoint.get("threshold")


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    from siamese.errors import check_at_least
    from siamese.evaluate import resolve_threshold
    from siamese.files import check_not_inside, claim_beside, prepare_output_dir
    from siamese.gallery import choose_shortlist, embed_files, identify, load_gallery
    from siamese.images import scan_folder

    check_at_least(args.top_k, 1, "--top-k")
    check_at_least(args.max_pictures, 0, "--max-pictures")
    resolve_threshold(args.threshold, None)  # a bad --threshold stops here, before any work
    folder = scan_folder(args.gallery, what="gallery folder", for_pairs=False)
    queries = query_files(args.query)
    shortlist = choose_shortlist(args.shortlist, len(folder))
    if args.out_path:
        check_not_inside(args.out_path, [args.gallery, args.query])
        check_identification_out_path(args.out_path)
    model, calibrated = load_scorer(args)
    threshold, source = resolve_threshold(args.threshold, calibrated)
    index = args.index or (os.path.join(args.out_path, "gallery_index.npz") if args.out_path else None)
    if args.out_path:
        prepare_output_dir(args.out_path)
    claimed = args.out_path or index  # one command at a time writes into the out path or the index
    with claim_beside(claimed, what="identification out path") if claimed else contextlib.nullcontext():
        gallery = load_gallery(folder, model, index_path=index, progress=True, log=_note)
        features = embed_files(model, queries, progress=len(queries) > PRINTED_QUERIES)
        results = identify(model, gallery, features, top_k=args.top_k, shortlist=shortlist)
        rows = match_rows(queries, results, gallery, threshold)
        if args.out_path:
            write_results(args.out_path, rows, queries, results, gallery, threshold, max_pictures=args.max_pictures)
    report(rows, queries, results, gallery, threshold, source, as_json=args.json)
    return 0


def _note(line):
    import sys

    print(line, file=sys.stderr)


def check_identification_out_path(out_path):
    known = {"matches.csv", "matches.json", "pictures", "gallery_index.npz"}
    if os.path.isdir(out_path):
        other = sorted(n for n in os.listdir(out_path) if not n.startswith(".") and n not in known)
        if other:
            raise UserError(f"out path '{out_path}' holds other files ({', '.join(other[:3])}); give an empty or new "
                            f"folder, or one identify.py wrote")
    elif os.path.exists(out_path):
        raise UserError(f"out path '{out_path}' is a file; give a folder")


def match_rows(queries, results, gallery, threshold):
    rows = []
    for query, matches in zip(queries, results):
        for m in matches:
            rows.append({"query": query, "rank": m.rank, "class": gallery.classes[m.label], "gallery_image": m.image,
                         "similarity": round(float(m.similarity), 6),
                         "verdict": "match" if m.similarity >= threshold else "unknown"})
    return rows


def write_results(out_path, rows, queries, results, gallery, threshold, *, max_pictures):
    import csv
    import json

    from siamese.files import atomic_folder, atomic_open
    from siamese.report import identification_picture

    with atomic_open(os.path.join(out_path, "matches.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["query", "rank", "class", "gallery_image", "similarity", "verdict"])
        writer.writeheader()
        writer.writerows(rows)
    with atomic_open(os.path.join(out_path, "matches.json"), "w") as f:
        json.dump({"threshold": threshold, "matches": rows}, f, indent=2)
    with atomic_folder(os.path.join(out_path, "pictures")) as staging:
        for i, (query, matches) in enumerate(zip(queries[:max_pictures], results)):
            name = f"{i:05d}_{os.path.splitext(os.path.basename(query))[0][:60]}.jpg"
            identification_picture(query, matches, gallery.classes, threshold, os.path.join(staging, name))


def report(rows, queries, results, gallery, threshold, source, *, as_json):
    import json

    if as_json:
        print(json.dumps({"threshold": threshold, "threshold_source": source, "matches": rows}, indent=2))
        return
    from siamese.metrics import digits_to_tell

    for query, matches in list(zip(queries, results))[:PRINTED_QUERIES]:
        best = matches[0]
        verdict = gallery.classes[best.label] if best.similarity >= threshold else "unknown"
        digits = digits_to_tell(best.similarity, threshold)  # the printed numbers agree with the verdict
        others = ", ".join(f"{gallery.classes[m.label]} {m.similarity:.{digits}f}" for m in matches[1:])
        print(f"{query}: {verdict} (best {gallery.classes[best.label]} {best.similarity:.{digits}f}"
              + (f"; then {others}" if others else "") + ")")
    if len(queries) > PRINTED_QUERIES:
        known = sum(m[0].similarity >= threshold for m in results)
        print(f"... {len(queries)} queries in all: {known} matched a known class, {len(queries) - known} unknown")
    print(f"threshold {threshold:.3f} ({source}); gallery {len(gallery.paths)} images in {len(gallery.classes)} classes "
          f"({gallery.reused} from the index, {gallery.embedded} embedded now)")


if __name__ == "__main__":
    raise SystemExit(main())
