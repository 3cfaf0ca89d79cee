"""Identification against a gallery (identify.py, siamese/gallery.py) and retrieval metrics."""

import csv
import json
import os
import shutil

import numpy as np
import pytest

import eval as eval_script
import identify
from conftest import make_folder
from siamese.checkpoint import load_model
from siamese.images import scan_folder
from siamese.identification import query_files
from siamese.predict import TorchPredictor
from siamese.retrieval import cmc, mean_average_precision, open_set_identification
from siamese.scoring import score_pairs


def test_cmc_and_map_against_hand_computed_rankings():
    # 3 queries (classes 0, 1, 2) against 4 gallery images (classes 0, 1, 1, 3)
    similarity = np.array([[0.9, 0.8, 0.1, 0.2],    # first correct at rank 1
                           [0.7, 0.2, 0.6, 0.9],    # ranking 3, 0, 2, 1: first correct (2) at rank 3
                           [0.5, 0.5, 0.5, 0.5]])   # class 2 is not in the gallery: not counted
    ranks, counted = cmc(similarity, [0, 1, 2], [0, 1, 1, 3], ranks=(1, 2, 3))
    assert counted == 2 and ranks == {1: 0.5, 2: 0.5, 3: 1.0}
    # AP: query 0 = 1; query 1: correct at ranks 3 and 4 -> (1/3 + 2/4) / 2
    assert mean_average_precision(similarity, [0, 1, 2], [0, 1, 1, 3]) == pytest.approx((1 + (1 / 3 + 2 / 4) / 2) / 2)


def test_leave_one_out_leaves_the_query_out():
    similarity = np.array([[1.0, 0.2, 0.9], [0.2, 1.0, 0.3], [0.9, 0.3, 1.0]])
    ranks, counted = cmc(similarity, [0, 1, 0], [0, 1, 0], ranks=(1,), exclude_self=True)
    assert counted == 2 and ranks[1] == 1.0  # image 1 has no other image of its class


def test_open_set_identification_by_hand():
    # gallery: classes 0 and 1; queries: two known (0, 1), three unknown (class 9)
    similarity = np.array([[0.9, 0.1], [0.3, 0.6], [0.8, 0.2], [0.4, 0.5], [0.2, 0.1]])
    labels, known = [0, 1, 9, 9, 9], [True, True, False, False, False]
    strict = open_set_identification(similarity, labels, [0, 1], known, fpir=0.0)
    assert strict["threshold"] > 0.8 and strict["dir"] == 0.5 and strict["fpir"] == 0.0  # only the 0.9 query passes
    loose = open_set_identification(similarity, labels, [0, 1], known, fpir=0.34)  # one unknown of three may pass
    assert 0.5 < loose["threshold"] <= 0.8 and loose["dir"] == 1.0 and loose["fpir"] == pytest.approx(1 / 3)


def _queries(tiny_dataset, tmp_path):
    folder = tmp_path / "queries"
    make_folder(str(folder), classes=2, per_class=2, seed=5)
    return str(folder)


def _brute_force(checkpoint, gallery_dir, queries):
    model, _ = load_model(checkpoint)
    predictor = TorchPredictor(model)
    gallery = scan_folder(gallery_dir)
    best = []
    for query in queries:
        scores = score_pairs(predictor, [(query, g) for g in gallery.paths])
        per_class = [max(scores[i] for i, label in enumerate(gallery.labels) if label == c)
                     for c in range(len(gallery.classes))]
        best.append((gallery.classes[int(np.argmax(per_class))], float(max(per_class))))
    return best


def _matches(out):
    with open(os.path.join(out, "matches.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_identify_ranks_classes_by_their_best_gallery_image(trained_checkpoint, tiny_dataset, tmp_path, capsys):
    gallery_dir, queries = tiny_dataset[1], _queries(tiny_dataset, tmp_path)
    out = str(tmp_path / "out")
    assert identify.main(["--gallery", gallery_dir, "--query", queries, "-c", trained_checkpoint, "-o", out,
                          "--top-k", "2", "--threshold", "0.5"]) == 0
    rows = _matches(out)
    files = query_files(queries)
    assert [r["rank"] for r in rows] == ["1", "2"] * len(files)
    expected = _brute_force(trained_checkpoint, gallery_dir, files)
    for query, (label, score) in zip(files, expected):
        first = next(r for r in rows if r["query"] == query and r["rank"] == "1")
        assert first["class"] == label and float(first["similarity"]) == pytest.approx(score, abs=1e-5)
        assert first["verdict"] == ("match" if score >= 0.5 else "unknown")
    assert len(os.listdir(os.path.join(out, "pictures"))) == len(files)
    assert json.load(open(os.path.join(out, "matches.json")))["matches"] == [
        dict(r, rank=int(r["rank"]), similarity=float(r["similarity"])) for r in rows]
    printed = capsys.readouterr().out
    assert all(f"{q}: " in printed for q in files)


def test_a_deployed_model_and_a_shortlist_give_the_same_matches(trained_checkpoint, onnx_model, tiny_dataset, tmp_path,
                                                                capsys):
    gallery_dir, queries = tiny_dataset[1], _queries(tiny_dataset, tmp_path)
    runs = {}
    for name, extra in (("torch", ["-c", trained_checkpoint]), ("onnx", ["--engine", onnx_model]),
                        ("shortlist", ["-c", trained_checkpoint, "--shortlist", "100"])):
        assert identify.main(["--gallery", gallery_dir, "--query", queries, "-o", str(tmp_path / name), *extra,
                              "--top-k", "3"]) == 0
        runs[name] = _matches(str(tmp_path / name))
    for name in ("onnx", "shortlist"):
        assert [(r["query"], r["class"], r["gallery_image"]) for r in runs[name]] == \
               [(r["query"], r["class"], r["gallery_image"]) for r in runs["torch"]]
        np.testing.assert_allclose([float(r["similarity"]) for r in runs[name]],
                                   [float(r["similarity"]) for r in runs["torch"]], atol=1e-5)


def _indexed(capsys):
    line = capsys.readouterr().out.strip().splitlines()[-1]
    reused, embedded = line.split("(")[-1].rstrip(")").split(" from the index, ")
    return int(reused), int(embedded.split()[0])


def test_the_gallery_index_is_reused_and_updated_file_by_file(trained_checkpoint, tiny_dataset, tmp_path, capsys):
    gallery = str(tmp_path / "gallery")
    shutil.copytree(tiny_dataset[1], gallery)
    query = scan_folder(gallery).paths[0]
    index = str(tmp_path / "gallery.npz")

    def run():
        assert identify.main(["--gallery", gallery, "--query", query, "-c", trained_checkpoint, "--index", index]) == 0
        return _indexed(capsys)

    count = len(scan_folder(gallery).paths)
    assert run() == (0, count)
    assert run() == (count, 0)
    first = scan_folder(gallery).paths[1]
    _redraw(first)  # a changed file
    os.remove(scan_folder(gallery).paths[3])  # a removed one
    _redraw(query, os.path.join(os.path.dirname(query), "new.png"))  # an added one
    renamed = scan_folder(gallery).paths[2]  # renamed: known by its content (a copy beside it would be set aside)
    os.rename(renamed, os.path.join(os.path.dirname(renamed), "renamed.png"))
    assert run() == (count - 2, 2)  # the changed and the added image embedded, the removed one dropped
    assert run() == (count, 0)


def _redraw(path, out=None):
    """Another image: `path` with one black pixel more, at `out` (default: in its place)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
    image.putpixel((0, 0), (0, 0, 0))
    image.save(out or path)


def test_an_index_of_another_model_or_a_damaged_one_is_one_line(trained_checkpoint, onnx_model, tiny_dataset, tmp_path,
                                                                capsys):
    import torch

    query = scan_folder(tiny_dataset[1]).paths[0]
    index = str(tmp_path / "gallery.npz")
    common = ["--gallery", tiny_dataset[1], "--query", query, "--index", index]
    assert identify.main([*common, "-c", trained_checkpoint]) == 0
    capsys.readouterr()
    assert identify.main([*common, "--engine", onnx_model]) == 2  # the same model deployed: other files
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made with other files of this model" in err[0]
    other = torch.load(trained_checkpoint, weights_only=True)
    other["model"]["cls_head.1.bias"] += 1.0
    torch.save(other, str(tmp_path / "other.pth"))
    before = open(index, "rb").read()
    assert identify.main([*common, "-c", str(tmp_path / "other.pth"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made by another model" in err[0]
    assert open(index, "rb").read() == before and not os.path.exists(tmp_path / "out" / "matches.csv")
    open(index, "wb").write(before[:100])
    assert identify.main([*common, "-c", trained_checkpoint]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read the gallery index" in err[0]


@pytest.mark.parametrize("case, message", [
    ("empty_gallery", "holds no images"),
    ("one_image_gallery", "needs a gallery of at least two images"),
    ("query_not_an_image", "not.png"),
    ("missing_query", "does not exist"),
    ("shortlist", "--shortlist must be"),
    ("out_path_with_other_files", "holds other files"),
])
def test_bad_input_is_one_line(trained_checkpoint, tiny_dataset, tmp_path, capsys, case, message):
    gallery, query = tiny_dataset[1], scan_folder(tiny_dataset[1]).paths[0]
    out, extra = str(tmp_path / "out"), []
    if case == "empty_gallery":
        gallery = str(tmp_path / "empty")
        os.makedirs(os.path.join(gallery, "someone"))
    elif case == "one_image_gallery":
        gallery = str(tmp_path / "one")
        os.makedirs(os.path.join(gallery, "someone"))
        shutil.copy(query, os.path.join(gallery, "someone", "a.png"))
    elif case == "query_not_an_image":
        query = str(tmp_path / "not.png")
        open(query, "w").write("text")
    elif case == "missing_query":
        query = str(tmp_path / "nowhere.png")
    elif case == "shortlist":
        extra = ["--shortlist", "many"]
    elif case == "out_path_with_other_files":
        os.makedirs(out)
        open(os.path.join(out, "thesis.tex"), "w").write("keep me")
    assert identify.main(["--gallery", gallery, "--query", query, "-c", trained_checkpoint, "-o", out, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not os.path.exists(os.path.join(out, "matches.csv"))


def test_eval_retrieval_matches_a_ranking_by_hand(trained_checkpoint, tiny_dataset, tmp_path):
    out = str(tmp_path / "eval")
    assert eval_script.main(["-v", tiny_dataset[1], "-o", out, "-c", trained_checkpoint, "--device", "cpu",
                             "--retrieval", "--max-pictures", "0", "--workers", "0"]) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))["retrieval"]
    assert os.path.isfile(os.path.join(out, "cmc.png"))
    folder = scan_folder(tiny_dataset[1])
    model, _ = load_model(trained_checkpoint)
    predictor = TorchPredictor(model)
    n = len(folder.paths)
    scores = score_pairs(predictor, [(a, b) for a in folder.paths for b in folder.paths]).reshape(n, n)
    np.fill_diagonal(scores, -np.inf)
    labels = np.array(folder.labels)
    rank1 = np.mean([labels[np.argmax(scores[i])] == labels[i] for i in range(n)])
    assert metrics["cmc"]["1"] == pytest.approx(rank1) and metrics["queries"] == n
    assert 0 <= metrics["map"] <= 1 and {"dir", "fpir", "threshold"} <= set(metrics["open_set"])


def test_a_shortlist_reranks_only_the_nearest_by_cosine(trained_checkpoint, tiny_dataset):
    from siamese.gallery import identify as identify_queries, load_gallery

    model, _ = load_model(trained_checkpoint)
    predictor = TorchPredictor(model)
    gallery = load_gallery(scan_folder(tiny_dataset[1]), predictor)
    queries = predictor.embed_paths(scan_folder(tiny_dataset[0]).paths[:4])
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    nearest = np.argsort(-(unit(queries) @ unit(gallery.features).T), axis=1)[:, :3]
    for q, matches in enumerate(identify_queries(predictor, gallery, queries, top_k=5, shortlist=3)):
        allowed = {gallery.paths[i] for i in nearest[q]}
        assert matches and all(m.image in allowed for m in matches)


class _Tied:
    """A scorer that gives every pair one similarity (an untrained model can): every class ties."""

    embeds = True

    def __init__(self, similarity):
        self.similarity = similarity

    def index_key(self):
        return "tied:fp32"

    def embed_paths(self, paths, progress=False):
        return np.ones((len(paths), 4), np.float32)

    def score_features(self, features1, features2):
        return np.full(len(features1), self.similarity)


@pytest.mark.parametrize("top_k", [1, 5])
def test_a_tie_for_the_first_place_names_no_class(tmp_path, capsys, monkeypatch, top_k):
    """All four classes at 0.558307: identify.py answered the first by name, verdict 'match'."""
    gallery = make_folder(str(tmp_path / "gallery"), classes=4, per_class=2)
    query = os.path.join(gallery, "class_2", "img_00.png")
    monkeypatch.setattr("siamese.scorers.load_scorer", lambda *args, **kwargs: (_Tied(0.558307), None))
    out = str(tmp_path / "out")
    assert identify.main(["--gallery", gallery, "--query", query, "-c", "unused.pth", "-o", out, "--top-k",
                          str(top_k), "--threshold", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert f"{query}: tie: class_0, class_1, class_2, class_3 (each 0.558: no one class is named)" in printed
    rows = _matches(out)
    assert [(r["class"], r["rank"], r["verdict"]) for r in rows] == [(f"class_{c}", "1", "tie") for c in range(4)]
    answers = json.load(open(os.path.join(out, "matches.json")))["queries"]
    assert answers == [{"query": query, "verdict": "tie", "classes": [f"class_{c}" for c in range(4)]}]
    assert identify.main(["--gallery", gallery, "--query", query, "-c", "unused.pth", "--threshold", "0.6",
                          "--json"]) == 0  # below the threshold a tie is unknown
    assert json.loads(capsys.readouterr().out)["queries"][0] == {"query": query, "verdict": "unknown", "classes": []}


def test_the_verdict_of_matches():
    from siamese.gallery import Match, verdict

    def matches(*similarities):
        return [Match(k + 1, k, f"{k}.png", s) for k, s in enumerate(similarities)]

    assert verdict(matches(0.9, 0.8), 0.5) == ("match", (0,))
    assert verdict(matches(0.9, 0.9 - 1e-7, 0.8), 0.5) == ("tie", (0, 1))  # rounding noise is no difference
    assert verdict(matches(0.4, 0.4), 0.5) == ("unknown", ())
    assert verdict([], 0.5) == ("unknown", ())


def test_a_shortlisted_verdict_says_it_is_over_the_shortlist_only(trained_checkpoint, tiny_dataset, tmp_path, capsys):
    """A tie (or a better class) outside the shortlist cannot be seen: the verdict says what it was over."""
    query = scan_folder(tiny_dataset[1]).paths[0]
    for shortlist in (2, 0):
        out = tmp_path / str(shortlist)
        assert identify.main(["--gallery", tiny_dataset[1], "--query", query, "-c", trained_checkpoint, "-o", str(out),
                              "--shortlist", str(shortlist)]) == 0
        line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith(f"{query}: "))
        assert ("over the 2 shortlisted gallery images only" in line) == bool(shortlist), line
        assert json.load(open(out / "matches.json"))["shortlist"] == (shortlist or None)
