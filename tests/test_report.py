import os

import numpy as np
from PIL import Image, ImageDraw

import siamese.files
from conftest import make_folder
from siamese import report
from siamese.evaluate import Evaluation
from siamese.images import scan_folder
from siamese.metrics import verification_metrics
from siamese.pairs import evaluation_pairs


def test_cached_text_draws_what_pillow_draws():
    font = report._font(13)
    drawn = Image.new("RGB", (300, 40), (255, 255, 255))
    ImageDraw.Draw(drawn).text((8, 6), "similarity 0.873  WRONG", fill=report.RED, font=font)
    pieces = Image.new("RGB", (300, 40), (255, 255, 255))
    report._write(pieces, (8, 6), ("similarity ", "0.873", "  WRONG"), report.RED, 13)
    assert np.asarray(drawn).min() < 255  # something was drawn
    assert np.array_equal(np.asarray(pieces), np.asarray(drawn))


def test_long_class_names_are_shortened_to_fit(tmp_path):
    left, right = (str(tmp_path / name / "img.png") for name in ("a" * 80, "b" * 80))
    for path in (left, right):
        os.makedirs(os.path.dirname(path))
        Image.new("RGB", (40, 30), (90, 90, 90)).save(path)
    text = f"{report.class_of(left)} | {report.class_of(right)} (different)"
    mask, advance = report._text_mask(text, 13, 200)
    assert advance <= 200 and mask.width <= 200
    assert report._fit_text(text, report._font(13), 200).endswith("...")
    picture = report.pair_picture(left, right, 0.9, False, 0.5, tile=96)
    assert picture.size == (2 * 96 + 12, 96 + 40 + 8)
    assert picture.getpixel((1, 1)) == report.RED  # a different pair called same: the border says wrong


def test_pictures_are_whole_files_and_only_the_results_are_synced(tmp_path, monkeypatch):
    folder = scan_folder(make_folder(str(tmp_path / "d"), classes=3, per_class=4))
    pairs = evaluation_pairs(folder, seed=0, pairs_per_image=2)
    scores = np.linspace(0, 1, len(pairs))
    evaluation = Evaluation(pairs=pairs, scores=scores,
                            metrics=verification_metrics(scores, [p.same for p in pairs], 0.5))
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(siamese.files.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    out = tmp_path / "out"
    out.mkdir()
    paths = report.write_report(evaluation, str(out), threshold=0.5, workers=2)
    assert len(synced) == 4  # metrics.json, scores.csv, roc.png, errors.png; not one per pair picture
    pictures = sorted(os.listdir(paths["pictures"]))
    assert len(pictures) == len(pairs) and all(name.endswith(".jpg") for name in pictures)
    for name in pictures:
        with Image.open(os.path.join(paths["pictures"], name)) as img:
            img.load()  # a truncated file would fail here
    assert not [name for name in os.listdir(out) if name.startswith(".tmp-")]
