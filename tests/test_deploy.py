import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import eval as eval_script
import eval_tensorrt
import infer_tensorrt
import torch_to_onnx
from conftest import ROOT
from siamese.checkpoint import load_model
from siamese.data import Augmentation, ImageFiles, TrainingPairs
from siamese.images import Preprocessing, scan_folder
from siamese.runtime import load_deployed_model


def test_export_names_dynamic_batch_and_metadata(onnx_model, trained_checkpoint):
    model = onnx.load(onnx_model)
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["img1", "img2"]
    assert [o.name for o in model.graph.output] == ["similarity"]
    batch_dims = {v.type.tensor_type.shape.dim[0].dim_param for v in [*model.graph.input, *model.graph.output]}
    assert len(batch_dims) == 1 and batch_dims != {""}  # one shared symbolic batch dimension
    meta = {p.key: p.value for p in model.metadata_props}
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    assert meta["siamese.image_size"] == "32" and meta["siamese.backbone"] == "resnet18"
    assert float(meta["siamese.threshold"]) == pytest.approx(checkpoint["threshold"])
    assert json.loads(meta["siamese.mean"]) == [0.485, 0.456, 0.406] and meta["siamese.opset"] == "20"
    assert not os.path.exists(onnx_model + ".data")  # self-contained
    assert not any(n.op_type == "Dropout" for n in model.graph.node)


def test_onnx_matches_pytorch_at_several_batch_sizes(onnx_model, trained_checkpoint, tiny_dataset):
    network, _ = load_model(trained_checkpoint)
    session = onnxruntime.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    paths = scan_folder(tiny_dataset[1]).paths
    prep = network.preprocessing
    for n in (1, 3, 7):
        x1 = np.stack([prep.load(p) for p in paths[:n]])
        x2 = np.stack([prep.load(p) for p in paths[-n:]])
        with torch.no_grad():
            expected = torch.sigmoid(network(torch.from_numpy(x1), torch.from_numpy(x2))).numpy()
        got = session.run(["similarity"], {"img1": x1, "img2": x2})[0]
        assert got.shape == (n, 1)
        np.testing.assert_allclose(got[:, 0], expected, atol=1e-5)


@pytest.mark.slow
def test_fp16_export(trained_checkpoint, onnx_model, tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "half.onnx")
    assert torch_to_onnx.main(["-c", trained_checkpoint, "-o", out, "--fp16", "--images", tiny_dataset[1]]) == 0
    assert "tolerance 0.01" in capsys.readouterr().out
    model = onnx.load(out)
    assert {p.key: p.value for p in model.metadata_props}["siamese.precision"] == "fp16"
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 at the edges
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert os.path.getsize(out) < 0.6 * os.path.getsize(onnx_model)


def test_runtime_preprocessing_equals_the_training_transform(tiny_dataset, onnx_model):
    paths = scan_folder(tiny_dataset[1]).paths[:6]
    deployed = load_deployed_model(onnx_model)
    training = ImageFiles(paths, Preprocessing(image_size=32))
    for i, path in enumerate(paths):
        np.testing.assert_allclose(deployed.preprocessing.load(path), training[i].numpy(), atol=1e-6, rtol=0)
    pairs = TrainingPairs(scan_folder(tiny_dataset[1]), Preprocessing(image_size=32), seed=0,
                          augmentation=Augmentation("none"))
    x1, _, _ = pairs[(1, 0)]
    np.testing.assert_allclose(deployed.preprocessing.load(pairs.folder.paths[0]), x1.numpy(), atol=1e-6, rtol=0)


def test_infer_text_and_json(onnx_model, tiny_dataset, capsys):
    a, b = scan_folder(tiny_dataset[1]).paths[:2]
    assert infer_tensorrt.main(["--image1", a, "--image2", b, "--engine", onnx_model]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("Similarity between the two images = ")
    assert lines[1].split()[0] in ("same", "different")
    printed, threshold = float(lines[0].split("= ")[1]), float(lines[1].split("threshold ")[1].split(",")[0])
    assert (printed >= threshold) == (lines[1].split()[0] == "same")  # the printed numbers agree with the verdict
    assert infer_tensorrt.main(["--image1", a, "--image2", b, "--engine", onnx_model, "--json", "--threshold", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["similarity"] <= 1 and result["same"] is True and result["threshold_source"] == "--threshold"


def test_eval_tensorrt_on_onnx_equals_eval(onnx_model, trained_checkpoint, tiny_dataset, tmp_path):
    val = tiny_dataset[1]
    common = ["-v", val, "--pairs-per-image", "2", "--n-way", "3", "--trials", "10", "--workers", "0",
              "--max-pictures", "3"]
    assert eval_script.main([*common, "-o", str(tmp_path / "torch"), "-c", trained_checkpoint, "--device", "cpu"]) == 0
    assert eval_tensorrt.main([*common, "-o", str(tmp_path / "onnx"), "--engine", onnx_model, "--batch-size", "5"]) == 0
    a = json.load(open(tmp_path / "torch" / "metrics.json"))
    b = json.load(open(tmp_path / "onnx" / "metrics.json"))
    for key in ("pairs", "loss", "accuracy", "auc", "eer", "threshold", "best_accuracy"):
        assert b[key] == pytest.approx(a[key], abs=1e-4), key
    assert b["one_shot"]["accuracy"] == pytest.approx(a["one_shot"]["accuracy"], abs=1e-4)
    assert sorted(os.listdir(tmp_path / "onnx" / "pairs")) == sorted(os.listdir(tmp_path / "torch" / "pairs"))


def test_runtime_works_without_torch(onnx_model, tiny_dataset, tmp_path):
    """The deployment scripts with torch and torchvision made unimportable."""
    a, b = scan_folder(tiny_dataset[1]).paths[:2]
    code = f"""
import sys

class NoTorch:  # as if torch and torchvision were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision'):
            raise ModuleNotFoundError(f"No module named {{name!r}}")

sys.meta_path.insert(0, NoTorch())
sys.path.insert(0, {ROOT!r})
import siamese.runtime, siamese.deployed, siamese.scoring, siamese.trt, siamese.cuda_memory
import siamese.evaluate, siamese.report, siamese.gallery
import infer_tensorrt, eval_tensorrt
assert infer_tensorrt.main(['--image1', {a!r}, '--image2', {b!r}, '--engine', {onnx_model!r}]) == 0
assert eval_tensorrt.main(['-v', {tiny_dataset[1]!r}, '-o', {str(tmp_path / 'e')!r}, '--engine', {onnx_model!r},
                           '--max-pictures', '2', '--workers', '0']) == 0
import identify
assert identify.main(['--gallery', {tiny_dataset[1]!r}, '--query', {a!r}, '--engine', {onnx_model!r},
                      '-o', {str(tmp_path / 'i')!r}, '--shortlist', '5']) == 0
import onnx_to_int8  # quantized, then evaluated and asked, all without torch
int8 = {str(tmp_path / 'model.int8.onnx')!r}
assert onnx_to_int8.main(['--onnx', {onnx_model!r}, '--calibration', {tiny_dataset[0]!r}, '-o', int8,
                          '--calibration-images', '8', '--check-images', '10', '--max-auc-drop', '1']) == 0
assert eval_tensorrt.main(['-v', {tiny_dataset[1]!r}, '-o', {str(tmp_path / 'e8')!r}, '--engine', int8,
                           '--max-pictures', '2', '--workers', '0']) == 0
assert identify.main(['--gallery', {tiny_dataset[1]!r}, '--query', {a!r}, '--engine', int8, '--json']) == 0
assert 'torch' not in sys.modules
print('ran without torch')
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ran without torch" in result.stdout and "Similarity between the two images" in result.stdout


def _error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


@pytest.mark.slow
def test_bad_input(onnx_model, trained_checkpoint, tiny_dataset, tmp_path, capsys):
    a = scan_folder(tiny_dataset[1]).paths[0]
    assert infer_tensorrt.main(["--image1", a, "--image2", str(tmp_path / "no.png"), "--engine", onnx_model]) == 2
    assert "no.png' does not exist" in _error(capsys)
    assert infer_tensorrt.main(["--image1", str(tmp_path), "--image2", a, "--engine", onnx_model]) == 2
    assert "is a folder; give an image file" in _error(capsys)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert infer_tensorrt.main(["--image1", a, "--image2", str(text), "--engine", onnx_model]) == 2
    assert "cannot read image" in _error(capsys)
    assert infer_tensorrt.main(["--image1", a, "--image2", a, "--engine", trained_checkpoint]) == 2
    assert "PyTorch checkpoint" in _error(capsys)
    assert infer_tensorrt.main(["--image1", a, "--image2", a, "--engine", str(tmp_path / "none.engine")]) == 2
    assert "does not exist" in _error(capsys)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00\x01garbage")
    assert infer_tensorrt.main(["--image1", a, "--image2", a, "--engine", str(broken)]) == 2
    assert "ONNX Runtime cannot load" in _error(capsys)
    assert torch_to_onnx.main(["-c", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "does not exist" in _error(capsys)
    export = ["-c", trained_checkpoint, "-o", str(tmp_path / "m.onnx")]
    assert torch_to_onnx.main([*export, "--images", str(tmp_path / "nowhere")]) == 2  # not random inputs instead
    assert "nowhere' does not exist" in _error(capsys)
    # torch.onnx keeps its own opset when it cannot convert; the file must not claim the one asked for
    assert torch_to_onnx.main([*export, "--opset", "99"]) == 2  # outside torch.onnx's range: refused as it is read
    assert "--opset must be at most " in _error(capsys)
    from siamese.errors import UserError
    from siamese.export import export_onnx

    with pytest.raises(UserError, match="could not convert resnet18 to opset 13"):
        export_onnx(load_model(trained_checkpoint)[0], str(tmp_path / "m.onnx"), opset=13)
    capsys.readouterr()  # torch.onnx's own warning about opsets below 18
    assert not os.path.exists(tmp_path / "m.onnx")
    out = tmp_path / "eval"
    assert eval_tensorrt.main(["-v", tiny_dataset[1], "-o", str(out), "--engine", onnx_model, "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in _error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("given, said", [("photo.png", "is an image"), ("runs", "is a folder"),
                                         ("notes.txt", "is neither an ONNX model nor a TensorRT engine")])
def test_a_model_that_is_no_model_says_what_it_is_and_what_m_expects(given, said, tmp_path, capsys):
    from PIL import Image

    image = str(tmp_path / "photo.png")
    Image.new("RGB", (8, 8)).save(image)
    os.makedirs(tmp_path / "runs")
    (tmp_path / "notes.txt").write_text("a note")
    assert infer_tensorrt.main(["--image1", image, "--image2", image, "-m", str(tmp_path / given)]) == 2
    line = _error(capsys)
    assert f"'{tmp_path / given}' {said}" in line and "-m expects an .onnx file" in line and ".engine or .plan" in line, line


def test_engine_path_without_tensorrt_is_clear(tmp_path, capsys, monkeypatch):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00serialized engine")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    assert infer_tensorrt.main(["--image1", str(image), "--image2", str(image), "--engine", str(engine)]) == 2
    assert "TensorRT is not installed" in _error(capsys)


_FAKE_PACKAGES = {  # what an optional package's import does: a Ctrl-C that the package turned into an
    # ImportError of its own, and an install that is there but broken
    "interrupted": "try:\n    raise KeyboardInterrupt\nexcept KeyboardInterrupt as e:\n"
                   "    raise ImportError(\"cannot import name '_pybind_state'\") from e\n",
    "broken": "raise ImportError('libcudart.so.12: cannot open shared object file')\n"}


@pytest.mark.parametrize("module", ["onnxruntime", "tensorrt", "faiss"])
@pytest.mark.parametrize("case", sorted(_FAKE_PACKAGES))
def test_only_a_missing_optional_package_says_to_install_it(case, module, tmp_path, monkeypatch):
    from siamese.gallery import Shortlist
    from siamese.runtime import _OnnxPart
    from siamese.trt import import_tensorrt
    from siamese.errors import UserError

    (tmp_path / module).mkdir()
    (tmp_path / module / "__init__.py").write_text(_FAKE_PACKAGES[case])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    load = {"onnxruntime": lambda: _OnnxPart(str(tmp_path / "m.onnx"), "pair", providers=None, batch_size=None),
            "tensorrt": import_tensorrt, "faiss": lambda: Shortlist(np.ones((2, 4), np.float32))}[module]
    if case == "interrupted":
        with pytest.raises(KeyboardInterrupt):
            load()
    else:
        with pytest.raises(UserError, match=f"{module} is installed but cannot be imported .*libcudart") as error:
            load()
        assert "pip install" not in str(error.value)
    monkeypatch.setitem(sys.modules, module, None)  # not installed: what to install
    with pytest.raises(UserError, match="pip install"):
        load()
