"""What identify.py reads and writes around the gallery search: the query files, the out path's
checks, the match rows, the files and pictures, and the lines printed. No torch here.
"""

import csv
import json
import os

from .errors import UserError
from .files import atomic_folder, atomic_open, write_json
from .images import check_image, class_images
from .metrics import digits_to_tell
from .report import identification_picture

PRINTED_QUERIES = 20  # one line each up to this many queries, a progress bar beyond


def query_files(path):
    """The query images: the file, or every image under the folder (sorted)."""
    if not os.path.exists(path):
        raise UserError(f"query '{path}' does not exist; give an image file or a folder of images")
    if not os.path.isdir(path):  # a file, or one line saying why it is not one (a FIFO, say)
        check_image(path)
        return [path]
    found = class_images(path)  # every image under the folder, as a class folder's are found
    if not found:
        raise UserError(f"query folder '{path}' holds no images")
    for file in found:
        check_image(file)
    return sorted(found)


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
    with atomic_open(os.path.join(out_path, "matches.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["query", "rank", "class", "gallery_image", "similarity", "verdict"])
        writer.writeheader()
        writer.writerows(rows)
    write_json(os.path.join(out_path, "matches.json"), {"threshold": threshold, "matches": rows})
    with atomic_folder(os.path.join(out_path, "pictures")) as staging:
        for i, (query, matches) in enumerate(zip(queries[:max_pictures], results)):
            name = f"{i:05d}_{os.path.splitext(os.path.basename(query))[0][:60]}.jpg"
            identification_picture(query, matches, gallery.classes, threshold, os.path.join(staging, name))


def print_matches(rows, queries, results, gallery, threshold, source, *, as_json):
    if as_json:
        print(json.dumps({"threshold": threshold, "threshold_source": source, "matches": rows}, indent=2,
                         allow_nan=False))
        return
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
