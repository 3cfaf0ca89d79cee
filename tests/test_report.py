import os

import numpy as np
import pytest
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
    # DejaVu's advances are fractional: pieces start on whole pixels, so glyphs may sit a pixel
    # apart, but the same ink covers the same box
    ink_drawn, ink_pieces = (np.asarray(img).min(axis=2) < 128 for img in (drawn, pieces))
    box = lambda ink: (np.flatnonzero(ink.any(0))[[0, -1]], np.flatnonzero(ink.any(1))[[0, -1]])
    (x1, y1), (x2, y2) = box(ink_drawn), box(ink_pieces)
    assert np.abs(x1 - x2).max() <= 2 and np.array_equal(y1, y2)
    assert abs(int(ink_drawn.sum()) - int(ink_pieces.sum())) <= 0.05 * ink_drawn.sum()


def test_long_class_names_are_shortened_to_fit(tmp_path):
    left, right = (str(tmp_path / name / "img.png") for name in ("a" * 80, "b" * 80))
    for path in (left, right):
        os.makedirs(os.path.dirname(path))
        Image.new("RGB", (40, 30), (90, 90, 90)).save(path)
    text = f"different: {report.class_of(left)} | {report.class_of(right)}"
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
    assert not [name for name in pictures if name.startswith(".tmp-")]


def test_pictures_show_images_at_their_own_size_within_the_tile_limits(tmp_path):
    sizes = {"face": (92, 112), "tiny": (30, 20), "photo": (1000, 500)}
    paths = {}
    for name, size in sizes.items():
        paths[name] = str(tmp_path / name / "img.png")
        os.makedirs(os.path.dirname(paths[name]))
        Image.new("RGB", size, (90, 90, 90)).save(paths[name])
    assert report._tile(paths["face"]).size == (92, 112)  # not enlarged: that adds pixels, not detail
    assert report._tile(paths["tiny"]).size == (report.MIN_TILE, report.MIN_TILE * 20 // 30)
    assert report._tile(paths["photo"]).size == (report.TILE, report.TILE // 2)
    picture = report.pair_picture(paths["face"], paths["tiny"], 0.2, False, 0.5)
    assert picture.size == (2 * 112 + 12, 112 + 40 + 8)  # the larger image sets the cell


def _evaluation(folder_path, pairs_per_image):
    folder = scan_folder(make_folder(folder_path, classes=3, per_class=4))
    pairs = evaluation_pairs(folder, seed=0, pairs_per_image=pairs_per_image)
    scores = np.linspace(0, 1, len(pairs))
    return Evaluation(pairs=pairs, scores=scores, metrics=verification_metrics(scores, [p.same for p in pairs], 0.5))


def test_a_new_run_replaces_every_picture_of_the_earlier_one(tmp_path):
    folder = str(tmp_path / "pairs")
    report.write_pair_pictures(_evaluation(str(tmp_path / "d"), 3), folder, threshold=0.5, workers=2)
    earlier = set(os.listdir(folder))
    fewer = _evaluation(str(tmp_path / "d"), 1)
    fewer.scores = 1 - fewer.scores  # other verdicts: other file names for the same pair numbers
    report.write_pair_pictures(fewer, folder, threshold=0.5, workers=2)
    now = set(os.listdir(folder))
    assert len(now) == len(fewer.pairs) < len(earlier)
    assert now - earlier  # the new verdicts are there, and nothing of the earlier run is left beside them
    assert sorted(os.listdir(tmp_path)) == ["d", "pairs"]  # no staging folder left behind


def test_a_failed_run_leaves_the_earlier_pictures_as_they_were(tmp_path, monkeypatch):
    folder = str(tmp_path / "pairs")
    evaluation = _evaluation(str(tmp_path / "d"), 2)
    report.write_pair_pictures(evaluation, folder, threshold=0.5, workers=2)
    earlier = {name: (tmp_path / "pairs" / name).read_bytes() for name in os.listdir(folder)}
    drawn = []

    def fails_at_the_fifth(*args, **kwargs):
        if len(drawn) == 4:
            raise OSError("disk full")
        drawn.append(1)
        return real(*args, **kwargs)

    real = report.pair_picture
    monkeypatch.setattr(report, "pair_picture", fails_at_the_fifth)
    evaluation.scores = 1 - evaluation.scores  # other pictures, had they been written
    with pytest.raises(OSError, match="disk full"):
        report.write_pair_pictures(evaluation, folder, threshold=0.5, workers=1)
    assert {name: (tmp_path / "pairs" / name).read_bytes() for name in os.listdir(folder)} == earlier
    assert sorted(os.listdir(tmp_path)) == ["d", "pairs"]


def test_folders_left_by_a_killed_run_are_removed(tmp_path):
    dead = tmp_path / ".tmp-pairs.999999999"  # above any process id Linux hands out
    dead.mkdir()
    (dead / "0_same_right.jpg").write_bytes(b"half")
    alive = tmp_path / f".tmp-pairs.{os.getppid()}"  # a running process: perhaps another run
    alive.mkdir()
    report.write_pair_pictures(_evaluation(str(tmp_path / "d"), 1), str(tmp_path / "pairs"), threshold=0.5)
    assert not dead.exists() and alive.exists()


def test_class_names_in_other_alphabets_are_drawn_as_letters_not_boxes():
    font = report._font(14)
    masks = [np.asarray(font.getmask(letter)) for letter in ("ü", "λ", "ж", "Ω")]
    assert all(m.size and m.max() > 0 for m in masks)  # every letter has ink
    shapes = {(m.shape, m.tobytes()) for m in masks}
    assert len(shapes) == 4  # and a shape of its own: a missing glyph would be the same box each time


def test_a_pair_picture_shows_the_similarity_against_the_threshold(tmp_path):
    folder = make_folder(str(tmp_path / "d"), classes=2, per_class=1)
    left, right = scan_folder(folder, for_pairs=False).paths
    drawn = []
    original = report._write

    def spy(canvas, xy, pieces, colour, size, max_width=None):
        drawn.append("".join(pieces))
        return original(canvas, xy, pieces, colour, size, max_width)

    report._write = spy
    try:
        report.pair_picture(left, right, 0.55774, False, 0.55768)
        report.pair_picture(left, right, 0.2, False, 0.5)
    finally:
        report._write = original
    assert drawn[0] == "similarity 0.55774 >= 0.55768  WRONG"  # digits enough to see the side of the threshold
    assert drawn[2] == "similarity 0.200 < 0.500  RIGHT"


def test_the_cmc_picture_labels_both_axes(tmp_path, monkeypatch):
    texts = []
    monkeypatch.setattr(report, "_write", lambda canvas, xy, pieces, *a, **k: texts.append("".join(pieces)))
    report.cmc_picture({1: 0.6, 5: 0.8, 10: 0.9}, str(tmp_path / "cmc.png"))
    assert {"1", "5", "10", "0%", "50%", "100%"} <= set(texts)
    assert any("rank k" in t for t in texts) and any("share of queries" in t for t in texts)
