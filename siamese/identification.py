"""What identify.py reads and writes around the gallery search: the query files, the out path's
checks, the match rows, the files and pictures, and the lines printed. No torch here.
"""

import csv
import json
import os

from .errors import UserError
from .files import atomic_folder, atomic_open, write_json
from .gallery import verdict
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
    """One row per match: its verdict 'match' (at or above the threshold), 'unknown' (below), or
    'tie' for each class that ties for the first place (gallery.verdict): no one class is named."""
    rows = []
    for query, matches in zip(queries, results):
        called, classes = verdict(matches, threshold)
        for m in matches:
            rows.append({"query": query, "rank": m.rank, "class": gallery.classes[m.label], "gallery_image": m.image,
                         "similarity": round(float(m.similarity), 6),
                         "verdict": "tie" if called == "tie" and m.label in classes else
                         "match" if m.similarity >= threshold else "unknown"})
    return rows


def query_verdicts(queries, results, gallery, threshold):
    """Per query: {'query', 'verdict' (match, tie or unknown), 'classes' (the class matched, the
    classes that tie, or none)}, as matches.json and --json give them."""
    answers = []
    for query, matches in zip(queries, results):
        called, classes = verdict(matches, threshold)
        answers.append({"query": query, "verdict": called, "classes": [gallery.classes[c] for c in classes]})
    return answers


def write_results(out_path, rows, queries, results, gallery, threshold, *, max_pictures, shortlist=None):
    """matches.csv, matches.json and the pictures. shortlist: how many gallery images FAISS proposed
    for each query (None: every one was scored), in matches.json: the verdicts are over those only."""
    with atomic_open(os.path.join(out_path, "matches.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["query", "rank", "class", "gallery_image", "similarity", "verdict"])
        writer.writeheader()
        writer.writerows(rows)
    answers = query_verdicts(queries, results, gallery, threshold)
    write_json(os.path.join(out_path, "matches.json"), {"threshold": threshold, "shortlist": shortlist,
                                                        "queries": answers, "matches": rows})
    with atomic_folder(os.path.join(out_path, "pictures")) as staging:
        for i, (query, matches) in enumerate(zip(queries[:max_pictures], results)):
            name = f"{i:05d}_{os.path.splitext(os.path.basename(query))[0][:60]}.jpg"
            identification_picture(query, matches, gallery.classes, threshold, os.path.join(staging, name),
                                   title=_called(answers[i]))


def _called(answer, most=5):
    """'Anna', 'unknown', or 'tie: Anna, Bob' (the first `most` classes, then how many more)."""
    if answer["verdict"] != "tie":
        return answer["classes"][0] if answer["classes"] else "unknown"
    names = answer["classes"]
    return "tie: " + ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def print_matches(rows, queries, results, gallery, threshold, source, *, as_json, shortlist=None):
    """The verdicts; with a shortlist, each line says it is over the shortlisted images: a class
    tying with the first among the others is not seen."""
    answers = query_verdicts(queries, results, gallery, threshold)
    if as_json:
        print(json.dumps({"threshold": threshold, "threshold_source": source, "shortlist": shortlist,
                          "queries": answers, "matches": rows}, indent=2, allow_nan=False))
        return
    over = f"; over the {shortlist} shortlisted gallery images only" if shortlist else ""
    for answer, matches in list(zip(answers, results))[:PRINTED_QUERIES]:
        best = matches[0]
        digits = digits_to_tell(best.similarity, threshold)  # the printed numbers agree with the verdict
        tie = answer["verdict"] == "tie"
        first = (f"each {best.similarity:.{digits}f}: no one class is named" if tie else
                 f"best {gallery.classes[best.label]} {best.similarity:.{digits}f}")
        others = ", ".join(f"{gallery.classes[m.label]} {m.similarity:.{digits}f}" for m in matches
                           if m is not best and not (tie and gallery.classes[m.label] in answer["classes"]))
        print(f"{answer['query']}: {_called(answer)} ({first}" + (f"; then {others}" if others else "") + f"{over})")
    if len(queries) > PRINTED_QUERIES:
        called = [a["verdict"] for a in answers]
        print(f"... {len(queries)} queries in all: {called.count('match')} matched a known class, "
              f"{called.count('tie')} tied between classes, {called.count('unknown')} unknown")
    print(f"threshold {threshold:.3f} ({source}); gallery {len(gallery.paths)} images in {len(gallery.classes)} classes "
          f"({gallery.reused} from the index, {gallery.embedded} embedded now)")
