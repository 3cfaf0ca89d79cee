"""A hostile user's gallery index and identify.py options: an index that is not finite, of the
wrong width or not numbers, a file that is no index at all, an index of another precision, and
paths that cannot hold an index, are each one line, and nothing is overwritten."""

import os
import shutil

import numpy as np
import pytest

import identify
from siamese.errors import UserError
from siamese.gallery import identify as identify_queries, load_gallery
from siamese.images import scan_folder


class FakeScorer:
    """Four numbers per image from its path; similarity 1 / (1 + L1 distance)."""

    embeds = True

    def __init__(self, key="f00d:fp32", features=None, scores=None):
        self.key, self.features, self.scores = key, features, scores

    def index_key(self):
        return self.key

    def embed_paths(self, paths, *, progress=False):
        if self.features is not None:
            return np.full((len(paths), 4), self.features, np.float32)
        return np.array([[len(p) % 7, p.count("1"), p.count("2"), i] for i, p in enumerate(paths)], np.float32)

    def score_features(self, a, b):
        if self.scores is not None:
            return np.full(len(a), self.scores, np.float32)
        return (1 / (1 + np.abs(a - b).sum(axis=1))).astype(np.float32)


def _gallery(tiny_folder):
    return scan_folder(tiny_folder, for_pairs=False)


def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _tamper(index, **arrays):
    data = dict(np.load(index))
    data.update(arrays)
    np.savez(index, **data)  # as the index was written: 'format' first


def _rows_nan(features):
    return np.full_like(features, np.nan)


def _five_rows_inf(features):
    bad = features.copy()
    bad[:5] = np.inf
    return bad


def _wider(features):
    return np.zeros((len(features), features.shape[1] + 3), np.float32)


def _not_numbers(features):
    return np.full(features.shape, "x")


def test_an_index_of_nan_features_is_one_line_and_kept(trained_checkpoint, tiny_dataset, tmp_path, capsys):
    gallery = tiny_dataset[1]
    query, index, out = scan_folder(gallery).paths[0], str(tmp_path / "g.npz"), str(tmp_path / "out")
    common = ["--gallery", gallery, "--query", query, "-c", trained_checkpoint, "--index", index]
    assert identify.main(common) == 0
    _tamper(index, features=_rows_nan(np.load(index)["features"]))
    before = open(index, "rb").read()
    capsys.readouterr()
    assert identify.main([*common, "-o", out]) == 2
    line = _one_line(capsys)
    assert "not finite" in line and "delete it" in line  # an index this toolkit wrote: deleting it indexes again
    assert open(index, "rb").read() == before and not os.path.exists(os.path.join(out, "matches.json"))


@pytest.mark.parametrize("tamper, message", [(_rows_nan, "18 image(s) with features that are not finite"),
                                             (_five_rows_inf, "5 image(s) with features that are not finite"),
                                             (_wider, "holds features of 7 numbers, and the model gives 4"),
                                             (_not_numbers, "features that are not numbers")])
def test_an_index_that_is_not_finite_numbers_of_the_model_width_is_refused(tiny_folder, tmp_path, tamper, message):
    folder, index = _gallery(tiny_folder), str(tmp_path / "g.npz")
    load_gallery(folder, FakeScorer(), index_path=index)
    _tamper(index, features=tamper(np.load(index)["features"]))
    with pytest.raises(UserError, match="delete it") as error:
        gallery = load_gallery(folder, FakeScorer(), index_path=index)
        identify_queries(FakeScorer(), gallery, FakeScorer().embed_paths(folder.paths[:1]))  # all rows reused
    assert message in str(error.value)


def test_a_scorer_that_gives_nan_is_never_a_silent_unknown(tiny_folder, tmp_path):
    folder = _gallery(tiny_folder)
    gallery = load_gallery(folder, FakeScorer())
    queries = FakeScorer().embed_paths(folder.paths[:2])
    with pytest.raises(UserError, match="not a number"):
        identify_queries(FakeScorer(scores=np.nan), gallery, queries)
    with pytest.raises(UserError, match="query image"):
        identify_queries(FakeScorer(), gallery, np.full_like(queries, np.nan), shortlist=3)
    index = str(tmp_path / "g.npz")
    with pytest.raises(UserError, match="gallery image"):
        load_gallery(folder, FakeScorer(features=np.inf), index_path=index)
    assert not os.path.exists(index)  # never an index the next run refuses


def test_the_index_of_another_precision_names_the_precision(tiny_folder, tmp_path):
    folder, index = _gallery(tiny_folder), str(tmp_path / "g.npz")
    load_gallery(folder, FakeScorer("f00d:fp32"), index_path=index)
    with pytest.raises(UserError) as error:
        load_gallery(folder, FakeScorer("f00d:int8"), index_path=index)
    assert "fp32" in str(error.value) and "int8" in str(error.value) and "another model" not in str(error.value)
    with pytest.raises(UserError, match=r"another model \(f00d, not beef\)"):
        load_gallery(folder, FakeScorer("beef:fp32"), index_path=index)


@pytest.fixture
def inputs(trained_checkpoint, onnx_model, tiny_dataset, tmp_path):
    """Copies of the files an --index might wrongly name: a checkpoint, an ONNX model, an image."""
    copies = {}
    for name, source in (("checkpoint", trained_checkpoint), ("onnx", onnx_model),
                         ("image", scan_folder(tiny_dataset[1]).paths[0])):
        copies[name] = str(tmp_path / f"{name}{os.path.splitext(source)[1]}")
        shutil.copy(source, copies[name])
    copies["unknown"] = str(tmp_path / "notes.npz")
    open(copies["unknown"], "w").write("my notes")
    return copies


@pytest.mark.parametrize("kind, words", [("checkpoint", "a PyTorch checkpoint"), ("onnx", "an ONNX model"),
                                         ("image", "an image (PNG)"), ("unknown", "not a gallery index")])
def test_an_index_path_that_names_another_file_says_what_it_is(trained_checkpoint, tiny_dataset, inputs, capsys, kind,
                                                               words):
    before = open(inputs[kind], "rb").read()
    query = scan_folder(tiny_dataset[1]).paths[0]
    assert identify.main(["--gallery", tiny_dataset[1], "--query", query, "-c", trained_checkpoint,
                          "--index", inputs[kind]]) == 2
    line = _one_line(capsys)
    assert words in line and "delete" not in line
    assert open(inputs[kind], "rb").read() == before


@pytest.mark.parametrize("case, message", [("superscript_shortlist", "--shortlist must be"),
                                           ("index_in_a_missing_folder", "does not exist"),
                                           ("index_inside_the_gallery", "inside the image folder"),
                                           ("index_is_a_folder", "is a folder")])
def test_index_and_shortlist_options_are_one_line(trained_checkpoint, tiny_dataset, tmp_path, capsys, case, message):
    gallery = str(tmp_path / "gallery")
    shutil.copytree(tiny_dataset[1], gallery)
    query = scan_folder(gallery).paths[0]
    extra = {"superscript_shortlist": ["--shortlist", "²"],
             "index_in_a_missing_folder": ["--index", str(tmp_path / "missing" / "dir" / "g.npz")],
             "index_inside_the_gallery": ["--index", os.path.join(gallery, "g.npz")],
             "index_is_a_folder": ["--index", str(tmp_path)]}[case]
    listing = sorted(os.walk(gallery))
    assert identify.main(["--gallery", gallery, "--query", query, "-c", trained_checkpoint, *extra]) == 2
    assert message in _one_line(capsys)
    assert sorted(os.walk(gallery)) == listing and not os.path.exists(tmp_path / "missing")



# Images are known by their content, not by their name, size or time.

class ContentScorer(FakeScorer):
    """Four numbers per image from its bytes: what a model's features depend on."""

    def embed_paths(self, paths, *, progress=False):
        self.embedded = getattr(self, "embedded", 0) + len(paths)
        return np.array([np.frombuffer(open(p, "rb").read()[-4:], np.uint8) for p in paths], np.float32)


def _pgm_gallery(root):
    """Two classes of PGM images of one size (as PGM files of one width and height are)."""
    for c in range(2):
        os.makedirs(os.path.join(root, f"class_{c}"))
        for i in range(3):
            with open(os.path.join(root, f"class_{c}", f"img_{i}.pgm"), "wb") as f:
                f.write(b"P5\n4 4\n255\n" + bytes([40 * c + 10 * i + k for k in range(16)]))
    return root


def test_images_swapped_between_classes_with_the_same_size_and_time_are_embedded_by_content(tmp_path):
    root, index = _pgm_gallery(str(tmp_path / "gallery")), str(tmp_path / "g.npz")
    load_gallery(_gallery(root), ContentScorer(), index_path=index)
    a, b = os.path.join(root, "class_0", "img_1.pgm"), os.path.join(root, "class_1", "img_2.pgm")
    stamp = os.stat(a).st_mtime_ns
    os.rename(a, a + ".swap")  # mv keeps the times; an archive gives every file one
    os.rename(b, a)
    os.rename(a + ".swap", b)
    for path in (a, b):
        os.utime(path, ns=(stamp, stamp))
    scorer = ContentScorer()
    folder = _gallery(root)
    gallery = load_gallery(folder, scorer, index_path=index)
    np.testing.assert_array_equal(gallery.features, ContentScorer().embed_paths(folder.paths))
    assert getattr(scorer, "embedded", 0) == 0  # both were known already, by their content
    os.rename(b, os.path.join(root, "class_1", "renamed.pgm"))  # a renamed image keeps its features too
    assert load_gallery(_gallery(root), scorer, index_path=index).embedded == 0


def test_an_index_that_knew_images_by_size_and_time_is_refused(tiny_folder, tmp_path):
    folder, index = _gallery(tiny_folder), str(tmp_path / "g.npz")
    names = [os.path.relpath(p, tiny_folder) for p in folder.paths]
    stamps = [os.stat(p) for p in folder.paths]
    np.savez(index, format=np.int64(1), key=np.str_("f00d:fp32"), paths=np.array(names),  # the earlier format
             sizes=np.array([s.st_size for s in stamps]), mtimes=np.array([s.st_mtime_ns for s in stamps]),
             features=FakeScorer().embed_paths(folder.paths))
    before = open(index, "rb").read()
    with pytest.raises(UserError, match="earlier version of the toolkit, which knew images by size and time"):
        load_gallery(folder, FakeScorer(), index_path=index)
    assert open(index, "rb").read() == before
