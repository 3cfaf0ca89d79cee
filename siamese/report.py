"""What an evaluation writes: metrics.json, scores.csv, roc.png, errors.png and one picture per
pair. Pictures are drawn with Pillow (no matplotlib figure per pair); no torch here."""

import csv
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .files import atomic_folder, atomic_open, write_json
from .images import load_image
from .metrics import digits_to_tell, roc

TILE = 192  # pictures show images at their own size, scaled down to this at most
MIN_TILE = 96  # and enlarged to this at least
GREEN, RED, GREY, BLUE = (0, 140, 60), (200, 30, 30), (120, 120, 120), (30, 80, 200)


# DejaVu Sans (free license in fonts/LICENSE_DEJAVU): Latin, Greek and Cyrillic letters, so class
# names such as 'Anna Müller' or 'Ελένη' are drawn as letters, not boxes.
FONT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fonts", "DejaVuSans.ttf")


@functools.lru_cache(maxsize=None)
def _font(size):
    try:
        return ImageFont.truetype(FONT, size)
    except OSError:  # Pillow without FreeType: its fixed-size bitmap font
        return ImageFont.load_default()


def _fit(img, size):
    """Scale to fit a size x size square, keeping the aspect ratio; small images are enlarged
    with hard pixel edges so they stay legible."""
    ratio = min(size / img.width, size / img.height)
    new_size = (max(1, round(img.width * ratio)), max(1, round(img.height * ratio)))
    if new_size == img.size:
        return img
    return img.resize(new_size, Image.NEAREST if ratio >= 2 else Image.BILINEAR)


def _fit_text(text, font, width):
    """Shorten text with an ellipsis until it fits the width in pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


@functools.lru_cache(maxsize=4096)
def _text_mask(text, size, max_width=None):
    """(mask, advance): the text rendered once as a coverage mask, however many pictures show it
    (rendering text is most of the time it takes to draw a pair picture)."""
    font = _font(size)
    if max_width is not None:
        text = _fit_text(text, font, max_width)
    _, _, right, bottom = font.getbbox(text)
    mask = Image.new("L", (max(1, right), max(1, bottom)))
    ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=font)
    return mask, font.getlength(text)


def _write(canvas, xy, pieces, colour, size, max_width=None):
    """Text made of pieces, each rendered once (a score's digits apart from the words around it);
    max_width shortens each piece on its own, so give it with a single piece."""
    x, y = xy
    for piece in pieces:
        mask, advance = _text_mask(piece, size, max_width)
        canvas.paste(colour, (round(x), y), mask)
        x += advance


def class_of(path):
    return os.path.basename(os.path.dirname(path))


def pair_picture(left, right, score, same, threshold, *, tile=None):
    """Both images in their own colours, their classes, the similarity against the threshold,
    marked right or wrong.
    tile: the square each image is fitted to (default: the larger image's own size, within
    MIN_TILE..TILE; enlarging a 92 x 112 face would only add pixels to encode, not detail)."""
    images = [_tile(path, tile) for path in (left, right)]
    tile = tile or max(side for img in images for side in img.size)
    predicted = score >= threshold
    correct = predicted == same
    header = max(40, tile // 4)
    canvas = Image.new("RGB", (2 * tile + 12, tile + header + 8), (255, 255, 255))
    colour = GREEN if correct else RED
    ImageDraw.Draw(canvas).rectangle([0, 0, canvas.width - 1, canvas.height - 1], outline=colour, width=4)
    size = max(11, tile // 14)
    verdict = "RIGHT" if correct else "WRONG"
    # The truth first: when long class names are cut short to fit, what is cut is a name.
    truth = f"same: {class_of(left)}" if same else f"different: {class_of(left)} | {class_of(right)}"
    digits = digits_to_tell(score, threshold)  # enough digits that the numbers agree with the verdict
    _write(canvas, (8, 6), ("similarity ", f"{score:.{digits}f}", " >= " if predicted else " < ",
                            f"{threshold:.{digits}f}", f"  {verdict}"), colour, size)
    _write(canvas, (8, 6 + header // 2), (truth,), (0, 0, 0), size, max_width=canvas.width - 16)
    for k, img in enumerate(images):
        canvas.paste(img, (4 + k * (tile + 4) + (tile - img.width) // 2, header + (tile - img.height) // 2))
    return canvas


@functools.lru_cache(maxsize=1024)  # at most ~110 MB of 192 px images
def _tile(path, size=None):
    """An image fitted to a size x size square (None: its own size within MIN_TILE..TILE),
    decoded once however many pairs show it."""
    img = load_image(path)
    return _fit(img, size or min(TILE, max(MIN_TILE, img.width, img.height)))


PNG = {"format": "PNG", "compress_level": 1}  # the plots: line art
# Pair pictures are mostly photographs: JPEG encodes them 4-8x faster than PNG (the larger share
# of writing a picture) into smaller files. Quality 90 without chroma subsampling keeps the
# coloured verdict text crisp.
JPEG = {"format": "JPEG", "quality": 90, "subsampling": 0}


def _save_png(img, path):
    with atomic_open(path, "wb") as f:
        img.save(f, **PNG)


def picture_indices(evaluation, threshold, max_pictures=None):
    """The pairs to draw, in pair order: every one, or the `max_pictures` most informative: the
    wrong ones first, the most confidently wrong first, then the right ones nearest the
    threshold; the two kinds (same, different) taking turns in each."""
    count = len(evaluation.pairs)
    if max_pictures is None or max_pictures >= count:
        return list(range(count))
    labels = evaluation.labels
    margin = np.where(labels, evaluation.scores - threshold, threshold - evaluation.scores)
    right = margin >= 0
    rank = np.empty(count, dtype=np.int64)  # within its kind and verdict, the smallest margin first
    for members in (np.flatnonzero((labels == kind) & (right == verdict)) for kind in (True, False)
                    for verdict in (False, True)):
        rank[members[np.argsort(margin[members], kind="stable")]] = np.arange(len(members))
    order = np.lexsort((np.arange(count), ~labels, rank, right))  # wrong before right, then by rank, same first
    return sorted(int(i) for i in order[:max_pictures])


def write_pair_pictures(evaluation, folder, *, threshold, max_pictures=None, workers=4):
    """One JPEG per pair drawn (picture_indices) in folder, which is replaced as a whole: no
    picture of an earlier run (another model's verdicts) stays beside this run's. Returns how
    many it wrote."""
    chosen = picture_indices(evaluation, threshold, max_pictures)
    count = len(chosen)
    width = len(str(max(len(evaluation.pairs) - 1, 0)))  # stable names, whatever max_pictures is

    def one(i):
        pair, score = evaluation.pairs[i], float(evaluation.scores[i])
        correct = (score >= threshold) == pair.same
        name = f"{i:0{width}d}_{'same' if pair.same else 'diff'}_{'right' if correct else 'wrong'}.jpg"
        # A plain write: the folder only appears once every picture is whole, and thousands of
        # fsyncs would take longer than the drawing.
        pair_picture(pair.left, pair.right, score, pair.same, threshold).save(os.path.join(staging, name), **JPEG)

    def every(start, step):  # one task per thread: a task per picture cost a third more time
        for k in range(start, count, step):
            one(chosen[k])

    workers = max(1, workers)
    with atomic_folder(folder) as staging:
        # Decoding, resizing and file writes release the GIL, so threads overlap them.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(every, range(workers), [workers] * workers))
    return count


def roc_picture(scores, labels, metrics, size=480):
    far, tar, _ = roc(scores, labels)
    margin = 56
    plot = size - 2 * margin
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(13)

    def xy(x, y):
        return margin + x * plot, size - margin - y * plot

    for v in np.linspace(0, 1, 6):
        draw.line([xy(v, 0), xy(v, 1)], fill=(230, 230, 230))
        draw.line([xy(0, v), xy(1, v)], fill=(230, 230, 230))
        draw.text((xy(v, 0)[0] - 8, size - margin + 6), f"{v:.1f}", fill=(0, 0, 0), font=font)
        draw.text((margin - 30, xy(0, v)[1] - 7), f"{v:.1f}", fill=(0, 0, 0), font=font)
    draw.rectangle([xy(0, 1), xy(1, 0)], outline=(0, 0, 0))
    draw.line([xy(0, 0), xy(1, 1)], fill=GREY, width=1)
    draw.line([xy(x, y) for x, y in zip(far, tar)], fill=BLUE, width=2)
    eer = metrics["eer"]
    ex, ey = xy(eer, 1 - eer)
    draw.ellipse([ex - 5, ey - 5, ex + 5, ey + 5], outline=RED, width=2)
    draw.text((ex + 8, ey + 2), f"EER {eer:.1%}", fill=RED, font=font)
    draw.text((margin, 16), f"ROC  AUC {metrics['auc']:.4f}  EER {eer:.2%}  ({metrics['pairs']} pairs)", fill=(0, 0, 0), font=_font(15))
    draw.text((size // 2 - 80, size - 24), "false accept rate", fill=(0, 0, 0), font=font)
    draw.text((6, margin - 22), "true accept rate", fill=(0, 0, 0), font=font)
    return canvas


def errors_picture(evaluation, threshold, per_row=4, tile=128):
    """Most confident false accepts (top row) and false rejects (bottom row)."""
    scores, labels = evaluation.scores, evaluation.labels
    different = np.flatnonzero(~labels)
    same = np.flatnonzero(labels)
    false_accepts = [i for i in different[np.argsort(-scores[different], kind="stable")][:per_row] if scores[i] >= threshold]
    false_rejects = [i for i in same[np.argsort(scores[same], kind="stable")][:per_row] if scores[i] < threshold]
    cell_w, cell_h = 2 * tile + 12, tile + max(40, tile // 4) + 8
    title_h = 28
    canvas = Image.new("RGB", (per_row * (cell_w + 8) + 8, 2 * (cell_h + title_h) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(15)
    rows = (("False accepts: different classes scored as same", false_accepts),
            ("False rejects: same class scored as different", false_rejects))
    for r, (title, indices) in enumerate(rows):
        top = r * (cell_h + title_h) + 4
        draw.text((8, top + 4), title + ("" if indices else ": none"), fill=(0, 0, 0), font=font)
        for c, i in enumerate(indices):
            p = evaluation.pairs[i]
            canvas.paste(pair_picture(p.left, p.right, float(scores[i]), p.same, threshold, tile=tile),
                         (8 + c * (cell_w + 8), top + title_h))
    return canvas


def write_report(evaluation, out_dir, *, threshold, extra=None, max_pictures=None, workers=4):
    """Write every output file; returns {name: path}."""
    _tile.cache_clear()  # files may have changed since an earlier report in this process
    metrics = dict(evaluation.metrics, **(extra or {}))
    paths = {"metrics": os.path.join(out_dir, "metrics.json"), "scores": os.path.join(out_dir, "scores.csv"),
             "roc": os.path.join(out_dir, "roc.png"), "errors": os.path.join(out_dir, "errors.png"),
             "pictures": os.path.join(out_dir, "pairs")}
    metrics["pictures"] = len(picture_indices(evaluation, threshold, max_pictures))
    write_json(paths["metrics"], metrics)
    with atomic_open(paths["scores"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["left", "right", "left_class", "right_class", "same", "similarity"])
        for pair, score in zip(evaluation.pairs, evaluation.scores):
            writer.writerow([pair.left, pair.right, class_of(pair.left), class_of(pair.right), int(pair.same), f"{score:.6f}"])
    if "auc" in metrics:
        _save_png(roc_picture(evaluation.scores, evaluation.labels, metrics), paths["roc"])
    else:
        del paths["roc"]
    _save_png(errors_picture(evaluation, threshold), paths["errors"])
    write_pair_pictures(evaluation, paths["pictures"], threshold=threshold, max_pictures=max_pictures, workers=workers)
    return paths


def cmc_picture(curve, path, size=480):
    """The cumulative match characteristic: the share of queries answered within each rank."""
    ranks = sorted(curve)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = 50, 20, size - 20, size - 50
    draw.rectangle([left, top, right, bottom], outline=GREY)
    span = max(1, ranks[-1] - ranks[0])

    def xy(rank, rate):
        return left + (rank - ranks[0]) / span * (right - left), bottom - rate * (bottom - top)

    draw.line([xy(k, curve[k]) for k in ranks], fill=BLUE, width=2)
    for k in ranks:
        x, y = xy(k, curve[k])
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=BLUE)
        _write(img, (round(x) - 3, bottom + 4), (str(k),), GREY, 11)  # a tick label at every rank measured
    for rate in (0.0, 0.25, 0.5, 0.75, 1.0):
        _, y = xy(ranks[0], rate)
        draw.line([left - 4, y, left, y], fill=GREY)
        _write(img, (left - 36, round(y) - 7), (f"{rate:.0%}",), GREY, 11)
    _write(img, (left + (right - left) // 2 - 140, bottom + 22),
           ("rank k: the class among the first k answers",), (0, 0, 0), 12)
    _write(img, (left + 8, top + 6), ("share of queries identified within rank k",), (0, 0, 0), 12)
    _write(img, (left + 8, top + 24), (f"rank-1 {curve[ranks[0]]:.1%}",), BLUE, 12)
    _save_png(img, path)
    return path


def identification_picture(query, matches, classes, threshold, path, *, tile=128, title=None):
    """The query beside its best gallery image of each class found, with the similarities; a
    match (at or above the threshold) framed green, below it grey. title: what the query is
    called (default: the first class, or 'unknown' below the threshold)."""
    width = (len(matches) + 1) * (tile + 8) + 8
    canvas = Image.new("RGB", (width, tile + 58), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    known = bool(matches) and matches[0].similarity >= threshold
    title = title or (classes[matches[0].label] if known else "unknown")
    _write(canvas, (8, 4), (f"query: {title}",), GREEN if known and title == classes[matches[0].label] else RED, 12,
           max_width=width - 16)
    items = [(query, None)] + [(m.image, m) for m in matches]
    for k, (image, match) in enumerate(items):
        x = 8 + k * (tile + 8)
        img = _tile(image, tile)
        canvas.paste(img, (x + (tile - img.width) // 2, 22 + (tile - img.height) // 2))
        if match is not None:
            colour = GREEN if match.similarity >= threshold else GREY
            draw.rectangle([x - 2, 20, x + tile + 1, 22 + tile + 1], outline=colour, width=2)
            _write(canvas, (x, tile + 26), (f"{match.rank}. {classes[match.label]}",), (0, 0, 0), 11, max_width=tile)
            digits = digits_to_tell(match.similarity, threshold)
            _write(canvas, (x, tile + 40), (f"{match.similarity:.{digits}f}", " >= " if match.similarity >= threshold
                                            else " < ", f"{threshold:.{digits}f}"), colour, 11)
    with atomic_open(path, "wb") as f:
        canvas.save(f, **JPEG)
    return path
