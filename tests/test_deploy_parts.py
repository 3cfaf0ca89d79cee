"""The embedder and head exported beside the pair model: each image embedded once by the runtimes
(ONNX Runtime here; TensorRT in test_tensorrt_fake.py), with the pair model's results."""

import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch

import eval as eval_script
import eval_tensorrt
import torch_to_onnx
from siamese.checkpoint import load_model
from siamese.errors import UserError
from siamese.images import scan_folder
from siamese.contract import part_path
from siamese.runtime import OnnxRuntimeModel, load_deployed_model
from siamese.scoring import score_pairs


def _meta(path):
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def _copy_export(onnx_model, folder, parts=("embed", "head")):
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, "model.onnx")
    for part in ("pair", *parts):
        shutil.copy(part_path(onnx_model, part), part_path(out, part))
    return out


def test_export_writes_an_embedder_and_a_head_that_belong_together(onnx_model, trained_checkpoint, tiny_dataset):
    embed, head = part_path(onnx_model, "embed"), part_path(onnx_model, "head")
    assert embed.endswith("model.embed.onnx") and head.endswith("model.head.onnx")
    metas = {part: _meta(part_path(onnx_model, part)) for part in ("pair", "embed", "head")}
    assert {m["siamese.part"] for m in metas.values()} == {"pair", "embed", "head"}
    assert len({m["siamese.fingerprint"] for m in metas.values()}) == 1 and metas["pair"]["siamese.fingerprint"]
    assert all(m["siamese.feature_dim"] == "512" and m["siamese.image_size"] == "32" for m in metas.values())
    assert [i.name for i in onnx.load(embed).graph.input] == ["images"]
    assert [i.name for i in onnx.load(head).graph.input] == ["features1", "features2"]

    network, _ = load_model(trained_checkpoint)
    model = load_deployed_model(onnx_model)
    x = np.stack([model.preprocessing.load(p) for p in scan_folder(tiny_dataset[1]).paths[:7]])
    with torch.no_grad():
        features = network.embed(torch.from_numpy(x)).numpy()
        expected = torch.sigmoid(network.score_features(torch.from_numpy(features[:6]),
                                                        torch.from_numpy(features[1:]))).numpy()
    got = model.embed(x)
    assert got.shape == (7, 512) and got.dtype == np.float32
    np.testing.assert_allclose(got, features, atol=1e-4 * max(1.0, np.abs(features).max()))
    np.testing.assert_allclose(model.score_features(features[:6], features[1:]), expected, atol=1e-5)
    np.testing.assert_allclose(model.score_features(features[:6], features[1:]), model.predict(x[:6], x[1:]), atol=1e-5)


def test_a_fingerprint_depends_on_the_weights(trained_checkpoint):
    from siamese.export import fingerprint

    network, _ = load_model(trained_checkpoint)
    before = fingerprint(network)
    assert fingerprint(network) == before
    with torch.no_grad():
        network.cls_head[1].bias[0] += 1e-3
    assert fingerprint(network) != before


def test_score_pairs_embeds_each_image_once(onnx_model, tiny_dataset, monkeypatch):
    paths = scan_folder(tiny_dataset[1]).paths
    pairs = [(a, b) for a in paths for b in paths if a < b]
    model = OnnxRuntimeModel(onnx_model)
    whole = model.score_whole_pairs(pairs)
    embedded = []
    embedder = model.parts[0]
    run = embedder.run
    monkeypatch.setattr(embedder, "run", lambda feeds: embedded.append(len(feeds["images"])) or run(feeds))
    pair_calls = []
    monkeypatch.setattr(model.pair, "run", lambda feeds: pair_calls.append(1))
    scores = score_pairs(model, pairs)
    assert sum(embedded) == len(paths) and not pair_calls  # every image once, no pair through the whole model
    np.testing.assert_allclose(scores, whole, atol=1e-5)


@pytest.mark.parametrize("parts", ["with", "without", "mismatched"])
def test_eval_tensorrt_equals_eval_with_and_without_parts(onnx_model, trained_checkpoint, tiny_dataset, tmp_path,
                                                          capsys, parts):
    export = _copy_export(onnx_model, tmp_path / "export", parts=() if parts == "without" else ("embed", "head"))
    if parts == "mismatched":  # parts of another export: told by the fingerprint, never mixed
        model = onnx.load(part_path(export, "head"))
        next(p for p in model.metadata_props if p.key == "siamese.fingerprint").value = "0" * 16
        onnx.save(model, part_path(export, "head"))
    common = ["-v", tiny_dataset[1], "--pairs-per-image", "2", "--n-way", "3", "--trials", "10", "--workers", "0",
              "--max-pictures", "2"]
    assert eval_script.main([*common, "-o", str(tmp_path / "torch"), "-c", trained_checkpoint, "--device", "cpu"]) == 0
    capsys.readouterr()
    assert eval_tensorrt.main([*common, "-o", str(tmp_path / "onnx"), "--engine", export]) == 0
    err = capsys.readouterr().err
    a = json.load(open(tmp_path / "torch" / "metrics.json"))
    b = json.load(open(tmp_path / "onnx" / "metrics.json"))
    for key in ("pairs", "loss", "accuracy", "auc", "eer", "threshold", "best_accuracy"):
        assert b[key] == pytest.approx(a[key], abs=1e-4), key
    assert b["one_shot"]["accuracy"] == pytest.approx(a["one_shot"]["accuracy"], abs=1e-4)
    if parts == "with":
        assert "note:" not in err
    elif parts == "without":
        assert "has no model.embed.onnx and model.head.onnx beside it" in err and "export it again" in err
    else:
        assert "ignoring" in err and "model.head.onnx" in err and "another model" in err


def test_a_part_given_as_the_model_is_one_line(onnx_model, tiny_dataset, capsys):
    a, b = scan_folder(tiny_dataset[1]).paths[:2]
    import infer_tensorrt

    assert infer_tensorrt.main(["--image1", a, "--image2", b, "--engine", part_path(onnx_model, "embed")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the embed part of an export, not the pair model" in err[0]


def test_embedding_needs_the_parts(onnx_model, tmp_path):
    model = load_deployed_model(_copy_export(onnx_model, tmp_path, parts=()))
    with pytest.raises(UserError, match="cannot embed images: it has no model.embed.onnx and model.head.onnx beside it"):
        model.embed(np.zeros((1, 3, 32, 32), np.float32))


@pytest.mark.slow
def test_export_refuses_existing_parts_without_force(onnx_model, trained_checkpoint, tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "model.onnx")
    open(part_path(out, "head"), "w").write("someone's file")
    assert torch_to_onnx.main(["-c", trained_checkpoint, "-o", out, "--images", tiny_dataset[1]]) == 2
    assert "model.head.onnx" in capsys.readouterr().err
    assert open(part_path(out, "head")).read() == "someone's file" and not os.path.exists(out)
    assert torch_to_onnx.main(["-c", trained_checkpoint, "-o", out, "--images", tiny_dataset[1], "--force"]) == 0
    assert _meta(part_path(out, "head"))["siamese.part"] == "head"
    assert "embed each image once" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("average, feature_dim", [("flip_average", "1024"), ("shift_average", "512")])
def test_a_test_time_average_deploys_with_the_model(trained_checkpoint, tiny_dataset, tmp_path, average, feature_dim):
    """--flip-average and --shift-average live in the model: eval.py and every exported part apply
    them alike."""
    state = torch.load(trained_checkpoint, weights_only=True)
    state["config"][average] = True
    checkpoint = str(tmp_path / "averaged.pth")
    torch.save(state, checkpoint)
    out = str(tmp_path / "averaged.onnx")
    assert torch_to_onnx.main(["-c", checkpoint, "-o", out, "--images", tiny_dataset[1]]) == 0
    meta = _meta(part_path(out, "embed"))
    assert meta["siamese.feature_dim"] == feature_dim and meta[f"siamese.{average}"] == "1"
    common = ["-v", tiny_dataset[1], "--pairs-per-image", "2", "--workers", "0", "--max-pictures", "0"]
    assert eval_script.main([*common, "-o", str(tmp_path / "torch"), "-c", checkpoint, "--device", "cpu"]) == 0
    assert eval_script.main([*common, "-o", str(tmp_path / "plain"), "-c", trained_checkpoint, "--device", "cpu"]) == 0
    for engine, name in ((out, "parts"), (_copy_export(out, tmp_path / "pair_only", parts=()), "pair")):
        assert eval_tensorrt.main([*common, "-o", str(tmp_path / name), "--engine", engine]) == 0
    scores = {name: np.loadtxt(tmp_path / name / "scores.csv", delimiter=",", skiprows=1, usecols=5)
              for name in ("torch", "plain", "parts", "pair")}
    np.testing.assert_allclose(scores["parts"], scores["torch"], atol=1e-5)
    np.testing.assert_allclose(scores["pair"], scores["torch"], atol=1e-5)
    assert np.abs(scores["torch"] - scores["plain"]).max() > 1e-4  # the average is really applied
