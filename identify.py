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
import sys

from siamese.errors import cli
from siamese.options import (BATCH, PICTURES, PROBABILITY, SHORTLIST, TOP_K, add_model_option, add_out_option,
                             add_pytorch_options, script_parser)

def get_args_parser():
    p = script_parser(__doc__)
    p.add_argument("--gallery", required=True, type=str, help="folder of known entities: ROOT/ClassName/image")
    p.add_argument("--query", required=True, type=str, help="an image file, or a folder of images (any depth)")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("-c", "--checkpoint", type=str, help="a .pth written by train.py (runs on PyTorch)")
    add_model_option(model)
    add_out_option(p, default=None,
                   help="folder for matches.csv, matches.json, pictures/ and the gallery index")
    p.add_argument("--top-k", default=5, type=TOP_K,
                   help="classes listed per query (and any more that tie with the first)")
    p.add_argument("--threshold", default=None, type=PROBABILITY,
                   help="'unknown' when the best similarity is below this (default: the model's calibrated threshold, "
                        "else 0.5)")
    p.add_argument("--index", default=None, type=str,
                   help="the gallery index file (default: OUT/gallery_index.npz with -o, else none: the gallery is "
                        "embedded every time)")
    p.add_argument("--shortlist", default="auto", type=SHORTLIST,
                   help="gallery images proposed by FAISS (cosine of the features) for the head to re-rank; 0: the head "
                        "scores the whole gallery; auto: the whole gallery up to 20,000 images, else 200")
    p.add_argument("--json", action="store_true", help="print the matches as JSON instead of text")
    p.add_argument("--max-pictures", default=50, type=PICTURES, help="write at most this many query pictures (with -o)")
    add_pytorch_options(p, device_help="with -c: auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", default=None, type=BATCH, help="images per batch when embedding")
    return p


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    from siamese.errors import check_at_least
    from siamese.evaluate import resolve_threshold
    from siamese.files import check_not_inside, claim_beside, prepare_output_dir
    from siamese.gallery import check_index_path, choose_shortlist, identify, load_gallery
    from siamese.identification import (PRINTED_QUERIES, check_identification_out_path, match_rows, print_matches,
                                        query_files, write_results)
    from siamese.images import scan_folder
    from siamese.scorers import load_scorer

    check_at_least(args.top_k, 1, "--top-k")
    check_at_least(args.max_pictures, 0, "--max-pictures")
    resolve_threshold(args.threshold, None)  # a bad --threshold stops here, before any work
    folder = scan_folder(args.gallery, what="gallery folder", for_pairs=False)
    queries = query_files(args.query)
    shortlist = choose_shortlist(args.shortlist, len(folder))
    if args.out_path:
        check_not_inside(args.out_path, [args.gallery, args.query])
        check_identification_out_path(args.out_path)
    check_index_path(args.index, [args.gallery, args.query])
    model, calibrated = load_scorer(args.engine, args.checkpoint, batch_size=args.batch_size, device=args.device,
                                    amp=args.amp, compile=args.compile, tf32=args.tf32,
                                    channels_last=args.channels_last)
    threshold, source = resolve_threshold(args.threshold, calibrated)
    index = args.index or (os.path.join(args.out_path, "gallery_index.npz") if args.out_path else None)
    if args.out_path:
        prepare_output_dir(args.out_path)
    claimed = args.out_path or index  # one command at a time writes into the out path or the index
    with claim_beside(claimed, what="identification out path") if claimed else contextlib.nullcontext():
        gallery = load_gallery(folder, model, index_path=index, progress=True,
                               log=lambda line: print(line, file=sys.stderr))
        features = model.embed_paths(queries, progress=len(queries) > PRINTED_QUERIES)
        results = identify(model, gallery, features, top_k=args.top_k, shortlist=shortlist)
        rows = match_rows(queries, results, gallery, threshold)
        if args.out_path:
            write_results(args.out_path, rows, queries, results, gallery, threshold, max_pictures=args.max_pictures,
                          shortlist=shortlist)
    print_matches(rows, queries, results, gallery, threshold, source, as_json=args.json, shortlist=shortlist)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
