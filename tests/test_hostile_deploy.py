"""A hostile user's report against the deployment files: derived files (INT8 copies, engines) of
an export that changed since, edited or inconsistent export metadata, parts that cannot be used,
and what a failed or killed deployment command leaves behind."""

import os
import re
import shutil
import sys
import tempfile

import onnx
import pytest

import identify
import onnx_to_int8
import onnx_to_trt
import torch_to_onnx
from fake_tensorrt import FakeCuda, make_fake_tensorrt
from siamese.contract import PARTS, part_path
from siamese.errors import UserError
from siamese.images import scan_folder
from siamese.runtime import load_deployed_model
from siamese.scoring import score_pairs
from siamese.trt import EngineBuild, TensorRTModel, build_engine_file

SMALL = ["--calibration-images", "8", "--check-images", "10", "--max-auc-drop", "1"]
QUIET = {"log": lambda *a: None}


def _set_metadata(path, **changes):
    """Rewrite an ONNX file's metadata (keys without the 'siamese.' prefix) under a new inode, so a
    hard-linked original is left as it was."""
    model = onnx.load(path)
    props = {p.key: p for p in model.metadata_props}
    for key, value in changes.items():
        props[f"siamese.{key}"].value = value
    onnx.save(model, path + ".new")
    os.replace(path + ".new", path)


def _linked_copy(folder, into):
    """The files of `folder` hard-linked into `into` (fast; files are only ever replaced, never
    rewritten in place, by the toolkit and by _set_metadata)."""
    shutil.copytree(folder, into, copy_function=os.link, ignore=shutil.ignore_patterns(".*"))
    return str(into)


def _reexport(folder, fingerprint="b" * 16):
    """What `torch_to_onnx.py -c B.pth -o folder/model.onnx --force` does to the export's files: each
    replaced by another model's."""
    for part in PARTS:
        _set_metadata(part_path(os.path.join(folder, "model.onnx"), part), fingerprint=fingerprint)


@pytest.fixture(scope="module")
def quantized(onnx_model, tiny_dataset, tmp_path_factory):
    """A folder with an export (model.onnx and its parts) and its INT8 copy for TensorRT (which ONNX
    Runtime runs too): model.int8.onnx and its parts."""
    folder = tmp_path_factory.mktemp("quantized")
    for part in PARTS:
        os.link(part_path(onnx_model, part), part_path(str(folder / "model.onnx"), part))
    assert onnx_to_int8.main(["--onnx", str(folder / "model.onnx"), "--calibration", tiny_dataset[0], "--target",
                              "tensorrt", *SMALL]) == 0
    return str(folder)


@pytest.fixture
def deployment(quantized, tmp_path):
    return _linked_copy(quantized, tmp_path / "exp")


def _pairs(tiny_dataset, count=12):
    paths = scan_folder(tiny_dataset[1]).paths
    return [(paths[i], paths[-1 - i]) for i in range(count)]


# 1. A derived file of an export that changed since is refused; alone, it runs.

def test_a_stale_int8_copy_is_refused_by_every_deployed_script(deployment, tiny_dataset, tmp_path, capsys):
    int8 = os.path.join(deployment, "model.int8.onnx")
    query = scan_folder(tiny_dataset[1]).paths[0]
    assert load_deployed_model(int8).embed_paths([query]).shape == (1, 512)
    _set_metadata(os.path.join(deployment, "model.embed.onnx"), fingerprint="b" * 16)  # only the embedder changed
    with pytest.raises(UserError, match="model.int8.embed.onnx' is stale: .*model.embed.onnx'"):
        load_deployed_model(int8).embed_paths([query])
    _reexport(deployment)
    with pytest.raises(UserError, match=r"model.int8.onnx' is stale: it was made from an earlier '.*model.onnx'"):
        load_deployed_model(int8)
    assert identify.main(["--gallery", tiny_dataset[1], "--query", query, "-m", int8]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is stale" in err[0] and "onnx_to_int8.py" in err[0]
    alone = tmp_path / "device"  # deployed without its source: it runs as it is
    alone.mkdir()
    for part in PARTS:
        shutil.copy(part_path(int8, part), alone / os.path.basename(part_path(int8, part)))
    model = load_deployed_model(str(alone / "model.int8.onnx"))
    assert model.embeds and score_pairs(model, _pairs(tiny_dataset)).shape == (12,)


def test_an_engine_of_a_changed_export_is_refused_alone_it_runs(deployment, tiny_dataset, tmp_path):
    trt = make_fake_tensorrt("10.9.0")
    build = EngineBuild(min_batch=1, opt_batch=2, max_batch=4)
    engines = {}
    for name, source in (("float", "model.onnx"), ("int8", "model.int8.onnx")):  # an engine of the copy: two steps
        engines[name] = os.path.join(deployment, f"{name}.engine")
        build_engine_file(os.path.join(deployment, source), engines[name], build, trt=trt, **QUIET)
        assert TensorRTModel(engines[name], trt=trt, cuda=FakeCuda()).threshold is not None
    device = tmp_path / "device"
    os.mkdir(device)
    for file in (engines["int8"], engines["int8"] + ".json"):
        shutil.copy(file, device / os.path.basename(file))
    _reexport(deployment)
    for engine in engines.values():
        with pytest.raises(UserError, match=rf"{os.path.basename(engine)}' is stale: .*model.onnx'"):
            TensorRTModel(engine, trt=trt, cuda=FakeCuda())
    model = TensorRTModel(str(device / "int8.engine"), trt=trt, cuda=FakeCuda())
    assert score_pairs(model, _pairs(tiny_dataset, 4)).shape == (4,)


def test_replacing_an_export_names_the_files_it_made_stale(deployment):
    from siamese.lineage import replace_parts

    build_engine_file(os.path.join(deployment, "model.int8.onnx"), os.path.join(deployment, "model.int8.engine"),
                      EngineBuild(min_batch=1, opt_batch=2, max_batch=4), trt=make_fake_tensorrt("10.9.0"), **QUIET)
    out = os.path.join(deployment, "model.onnx")
    written = {}
    for part in PARTS:  # another model's export, checked at temporary names beside the out paths
        written[part] = os.path.join(deployment, f".tmp-{os.path.basename(part_path(out, part))}.new")
        shutil.copy(part_path(out, part), written[part])
        _set_metadata(written[part], fingerprint="b" * 16)
    notes = []
    stale = replace_parts(written, {part: part_path(out, part) for part in PARTS}, log=notes.append)
    names = sorted(os.path.basename(derived) for derived, _ in stale)
    assert names == ["model.int8.embed.onnx", "model.int8.engine", "model.int8.head.onnx", "model.int8.onnx"]
    assert len(notes) == 1 and "now stale" in notes[0] and all(name in notes[0] for name in names)


def test_an_export_over_another_exports_embedder_says_so(onnx_model, tiny_dataset, tmp_path):
    """torch_to_onnx.py -o model.embed.onnx --force: the new pair model takes the place of the
    embedder of the export model.onnx, which the runtimes then refuse; the command says so."""
    from siamese.lineage import replace_parts

    for part in PARTS:
        shutil.copy(part_path(onnx_model, part), tmp_path / os.path.basename(part_path(onnx_model, part)))
    out = str(tmp_path / "model.embed.onnx")
    written = {}
    for part in PARTS:  # a pair model and its parts, checked at temporary names beside the out paths
        written[part] = str(tmp_path / f".tmp-{os.path.basename(part_path(out, part))}.new")
        shutil.copy(part_path(onnx_model, part), written[part])
    notes = []
    replace_parts(written, {part: part_path(out, part) for part in PARTS}, log=notes.append)
    export = str(tmp_path / "model.onnx")
    assert notes == [f"note: {out} replaced the embedder of the export {export}; the runtimes refuse that export "
                     f"until it is made again (torch_to_onnx.py)"]
    query = os.path.join(tiny_dataset[1], "class_0", "img_00.png")
    with pytest.raises(UserError):
        load_deployed_model(export).embed_paths([query])


def test_an_unchanged_export_makes_nothing_stale(deployment, tiny_dataset):
    from siamese.lineage import stale_files

    assert stale_files([part_path(os.path.join(deployment, "model.onnx"), part) for part in PARTS]) == []
    assert load_deployed_model(os.path.join(deployment, "model.int8.onnx")).embeds


@pytest.mark.slow
def test_a_forced_reexport_names_the_int8_copy_it_made_stale(deployment, trained_checkpoint, tiny_dataset, tmp_path,
                                                             capsys):
    import torch

    state = torch.load(trained_checkpoint, weights_only=True)
    state["model"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state["model"].items()}  # model B
    other = str(tmp_path / "B.pth")
    torch.save(state, other)
    out = os.path.join(deployment, "model.onnx")
    assert torch_to_onnx.main(["-c", other, "-o", out, "--images", tiny_dataset[1], "--force"]) == 0
    err = capsys.readouterr().err
    assert "now stale" in err and "model.int8.onnx" in err and "model.int8.head.onnx" in err
    assert identify.main(["--gallery", tiny_dataset[1], "--query", tiny_dataset[1], "-m",
                          os.path.join(deployment, "model.int8.onnx")]) == 2
    assert "is stale" in capsys.readouterr().err


# 2. Edited or inconsistent metadata is refused, naming the field.

@pytest.mark.parametrize("part, key, value, message", [
    ("pair", "format_version", "99", "is in export format version '99', and this toolkit reads version 1 only"),
    ("pair", "channel_order", "BGR", "channel_order 'BGR' is not RGB"),
    ("head", "shift_average", "1", "model.head.onnx' and '.*model.onnx' disagree on shift_average \\('1' against '0'\\)"),
    ("head", "threshold", "0.9", "model.head.onnx' and '.*model.onnx' disagree on threshold"),
    ("embed", "mean", "[0.5, 0.5, 0.5]", "model.embed.onnx' and '.*model.onnx' disagree on mean"),
    ("embed", "format_version", "99", "model.embed.onnx' is in export format version '99'"),
])
def test_edited_metadata_is_refused_naming_the_field(part, key, value, message, onnx_model, tmp_path):
    export = str(tmp_path / "model.onnx")
    for each in PARTS:
        os.link(part_path(onnx_model, each), part_path(export, each))
    _set_metadata(part_path(export, part), **{key: value})
    with pytest.raises(UserError, match=message):
        load_deployed_model(export).require_parts()


def test_an_engine_is_not_built_from_an_unknown_format(onnx_model, tmp_path):
    source = str(tmp_path / "model.onnx")
    os.link(onnx_model, source)
    _set_metadata(source, format_version="99")
    with pytest.raises(UserError, match="format version '99'"):
        build_engine_file(source, str(tmp_path / "model.engine"), trt=make_fake_tensorrt("10.9.0"), **QUIET)
    assert not os.path.exists(tmp_path / "model.engine")


# 13. Parts that are there but cannot be used: say what is wrong with them.

@pytest.mark.parametrize("case, message", [
    ("mixed", r"was exported from another model \(or in another precision\) than \S*model.head.onnx"),
    ("unfingerprinted", r"has no weights fingerprint \(an export from an earlier version\)"),
])
def test_unusable_parts_are_named_with_what_is_wrong(case, message, onnx_model, tiny_dataset, tmp_path, capsys):
    export = str(tmp_path / "model.onnx")
    for part in PARTS:
        os.link(part_path(onnx_model, part), part_path(export, part))
    if case == "mixed":
        _set_metadata(part_path(export, "head"), fingerprint="0" * 16)
    else:
        for part in PARTS:
            _set_metadata(part_path(export, part), fingerprint="")
    query = scan_folder(tiny_dataset[1]).paths[0]
    assert identify.main(["--gallery", tiny_dataset[1], "--query", query, "-m", export]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot embed images" in err and "has no embedder and head beside it" not in err
    assert re.search(message, err), err


# 15. The INT8 copy is not written into the folder it calibrates on.

def test_int8_out_path_inside_the_calibration_folder_is_refused(onnx_model, tiny_folder, capsys):
    before = sorted(scan_folder(tiny_folder).paths)
    out = os.path.join(tiny_folder, "class_0", "model.int8.onnx")
    assert onnx_to_int8.main(["--onnx", onnx_model, "--calibration", tiny_folder, "-o", out, *SMALL]) == 2
    assert "is inside the image folder" in capsys.readouterr().err
    assert sorted(scan_folder(tiny_folder).paths) == before
    assert sorted(os.listdir(os.path.join(tiny_folder, "class_0"))) == sorted(os.path.basename(p) for p in before
                                                                               if "class_0" in p)


# 19. ONNX Runtime's temporaries are kept beside the out path, where the next run removes them.

def test_quantization_temporaries_stay_beside_the_out_path(onnx_model, tiny_dataset, tmp_path, monkeypatch):
    import onnxruntime.quantization

    system = tmp_path / "system_temp"
    system.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system))
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    killed = out_folder / ".tmp-model.int8.onnx.4242.1.scratch.x1" / "ort.quant.abc"  # what a killed run left
    killed.mkdir(parents=True)
    (killed / "augmented_model.onnx").write_bytes(b"\0" * 1024)
    seen = []

    def interrupted(*args, **kwargs):  # as a kill would leave it: a folder of the tool's own, not removed
        seen.append(tempfile.mkdtemp(prefix="ort.quant."))
        raise RuntimeError("killed")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", interrupted)
    assert onnx_to_int8.main(["--onnx", onnx_model, "--calibration", tiny_dataset[0], "-o",
                              str(out_folder / "model.int8.onnx"), *SMALL]) == 2
    assert os.listdir(system) == []  # nothing in the system temp folder
    assert len(seen) == 1 and os.path.dirname(os.path.dirname(seen[0])) == str(out_folder)
    assert tempfile.tempdir == str(system)  # given back
    assert not os.path.exists(killed.parent)  # the killed run's scratch, removed by this run
    assert [n for n in os.listdir(out_folder) if not n.endswith(".lock")] == []


# 20. A failed export or build leaves nothing new behind.

def test_a_failed_export_leaves_no_new_folder(trained_checkpoint, tiny_dataset, tmp_path, monkeypatch, capsys):
    import siamese.export

    def failing(*args, **kwargs):
        raise UserError("ONNX export of resnet18 failed (opset 5)")

    monkeypatch.setattr(siamese.export, "export_onnx", failing)
    out = tmp_path / "new" / "deeper" / "model.onnx"
    assert torch_to_onnx.main(["-c", trained_checkpoint, "-o", str(out), "--images", tiny_dataset[1]]) == 2
    assert "opset 5" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_failed_engine_build_leaves_no_new_folder(onnx_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.9.0", fail_build=True))
    assert onnx_to_trt.main(["--onnx", onnx_model, "-o", str(tmp_path / "engines" / "model.engine")]) == 2
    assert "failed to build" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_an_unknown_opset_leaves_no_new_folder(trained_checkpoint, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "new" / "model.onnx"
    assert torch_to_onnx.main(["-c", trained_checkpoint, "-o", str(out), "--opset", "5", "--images",
                               tiny_dataset[1]]) == 2
    assert "opset" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_failed_command_keeps_a_new_folder_that_holds_more_than_its_lock(tmp_path):
    from siamese.files import claim_beside, new_folder

    with pytest.raises(RuntimeError):
        with new_folder(str(tmp_path / "new")):
            (tmp_path / "new" / "someone's.txt").write_text("kept")
            raise RuntimeError("failed")
    assert (tmp_path / "new" / "someone's.txt").read_text() == "kept"
    with pytest.raises(RuntimeError):
        with new_folder(str(tmp_path / "locked")):
            held = claim_beside(str(tmp_path / "locked" / "model.onnx")).__enter__()  # another command's claim
            raise RuntimeError("failed")
    assert os.listdir(tmp_path / "locked") == [".model.onnx.lock"]
    held.__exit__(None, None, None)
    with new_folder(str(tmp_path / "done")):
        pass
    assert (tmp_path / "done").is_dir()  # a command that succeeds keeps its folder


# 21. A gallery index is keyed by the content of the model files it was embedded with.

def _reweigh(path):
    """The file with one weight changed and its metadata kept: what quantizing again with another
    seed or method does to a part."""
    import numpy as np
    from onnx import numpy_helper

    model = onnx.load(path)
    tensor = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and
                  numpy_helper.to_array(t).size > 1)
    values = numpy_helper.to_array(tensor).copy()
    values.flat[0] += 0.5
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(model, path + ".new")
    os.replace(path + ".new", path)


@pytest.mark.parametrize("part", ["embed", "head", "pair"])
def test_a_gallery_index_is_not_reused_by_a_remade_int8_copy(part, deployment, tiny_dataset, tmp_path, capsys):
    int8, index = os.path.join(deployment, "model.int8.onnx"), str(tmp_path / "g.npz")
    common = ["--gallery", tiny_dataset[1], "--query", scan_folder(tiny_dataset[1]).paths[0], "--index", index]
    assert identify.main([*common, "-m", int8]) == 0
    assert identify.main([*common, "-m", int8]) == 0  # the same files: reused
    _reweigh(part_path(int8, part))
    before = open(index, "rb").read()
    capsys.readouterr()
    assert identify.main([*common, "-m", int8]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made with other files of this model" in err[0] and "delete it" in err[0]
    assert open(index, "rb").read() == before


@pytest.mark.slow
def test_a_gallery_index_is_not_reused_after_onnx_to_int8_force(deployment, tiny_dataset, tmp_path, capsys):
    int8, index = os.path.join(deployment, "model.int8.onnx"), str(tmp_path / "g.npz")
    common = ["--gallery", tiny_dataset[1], "--query", scan_folder(tiny_dataset[1]).paths[0], "--index", index]
    assert identify.main([*common, "-m", int8]) == 0
    assert onnx_to_int8.main(["--onnx", os.path.join(deployment, "model.onnx"), "--calibration", tiny_dataset[0],
                              "--target", "tensorrt", "--seed", "1", "--method", "percentile", "--force", *SMALL]) == 0
    capsys.readouterr()
    assert identify.main([*common, "-m", int8]) == 2
    assert "made with other files of this model" in capsys.readouterr().err
    os.remove(index)
    assert identify.main([*common, "-m", int8]) == 0


def test_an_engine_index_key_names_every_file_and_its_sidecar(deployment):
    trt, build = make_fake_tensorrt("10.9.0"), EngineBuild(min_batch=1, opt_batch=2, max_batch=4)
    engine = os.path.join(deployment, "model.engine")
    for part in PARTS:
        build_engine_file(part_path(os.path.join(deployment, "model.onnx"), part), part_path(engine, part), build,
                          trt=trt, **QUIET)
    key = TensorRTModel(engine, trt=trt, cuda=FakeCuda()).index_key()
    assert TensorRTModel(engine, trt=trt, cuda=FakeCuda()).index_key() == key
    sidecar = part_path(engine, "embed") + ".json"
    with open(sidecar, "a") as f:
        f.write(" ")  # another ENGINE.json (here only its spacing)
    assert TensorRTModel(engine, trt=trt, cuda=FakeCuda()).index_key() != key


# 22. Every runtime entry point checks the parts beside the pair model when it loads it.

@pytest.mark.parametrize("script", ["infer_tensorrt", "eval_tensorrt", "identify"])
def test_an_edited_pair_model_is_refused_by_every_entry_point(script, onnx_model, tiny_dataset, tmp_path, capsys):
    import eval_tensorrt
    import infer_tensorrt

    export = str(tmp_path / "model.onnx")
    for part in PARTS:
        os.link(part_path(onnx_model, part), part_path(export, part))
    _set_metadata(export, mean="[0.9, 0.9, 0.9]")
    paths = scan_folder(tiny_dataset[1]).paths
    argv = {"infer_tensorrt": ["--image1", paths[0], "--image2", paths[1]],
            "eval_tensorrt": ["-v", tiny_dataset[1], "-o", str(tmp_path / "eval")],
            "identify": ["--gallery", tiny_dataset[1], "--query", paths[0]]}[script]
    main = {"infer_tensorrt": infer_tensorrt.main, "eval_tensorrt": eval_tensorrt.main, "identify": identify.main}[script]
    assert main([*argv, "-m", export]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"model.embed.onnx' and '.*model.onnx' disagree on mean", err[0]), err
    assert not os.path.exists(tmp_path / "eval" / "metrics.json")


def test_an_engine_whose_parts_disagree_is_refused_at_load(deployment):
    trt, build = make_fake_tensorrt("10.9.0"), EngineBuild(min_batch=1, opt_batch=2, max_batch=4)
    engine = os.path.join(deployment, "model.engine")
    for part in PARTS:
        build_engine_file(part_path(os.path.join(deployment, "model.onnx"), part), part_path(engine, part), build,
                          trt=trt, **QUIET)
    import json

    with open(engine + ".json") as f:
        meta = json.load(f)
    meta["siamese.std"] = "[0.1, 0.1, 0.1]"
    with open(engine + ".json", "w") as f:
        json.dump(meta, f)
    with pytest.raises(UserError, match=r"model.embed.engine' and '.*model.engine' disagree on std"):
        TensorRTModel(engine, trt=trt, cuda=FakeCuda())


def test_the_metadata_read_without_onnx_is_onnx_s(deployment):
    from siamese.contract import onnx_metadata

    for name in sorted(os.listdir(deployment)):
        if name.endswith(".onnx"):
            path = os.path.join(deployment, name)
            assert onnx_metadata(path) == {p.key: p.value for p in onnx.load(path).metadata_props}
    damaged = os.path.join(deployment, "damaged.onnx")
    with open(os.path.join(deployment, "model.onnx"), "rb") as f:
        open(damaged, "wb").write(f.read()[:5000])
    with pytest.raises(UserError, match="cannot read .*damaged.onnx' as an ONNX file"):
        onnx_metadata(damaged)


# 23. The files of one export are bound by its id: the parts of another export of the same model
# (an INT8 copy calibrated with another seed) are refused, naming the part; exports without ids run.

@pytest.fixture(scope="module")
def reseeded(quantized, tmp_path_factory):
    """The INT8 copy of the same float export as `quantized`, calibrated with another seed."""
    folder = tmp_path_factory.mktemp("reseeded")
    for part in PARTS:
        os.link(part_path(os.path.join(quantized, "model.onnx"), part), part_path(str(folder / "model.onnx"), part))
    assert onnx_to_int8.main(["--onnx", str(folder / "model.onnx"), "--calibration", quantized_calibration(quantized),
                              "--target", "tensorrt", "--seed", "7", *SMALL]) == 0
    return str(folder)


def quantized_calibration(folder):
    from siamese.contract import onnx_metadata

    return onnx_metadata(os.path.join(folder, "model.int8.onnx"))["siamese.calibration"]


@pytest.mark.parametrize("script", ["infer_tensorrt", "eval_tensorrt", "identify"])
def test_the_embedder_of_another_int8_copy_is_refused_by_every_entry_point(script, deployment, reseeded, tiny_dataset,
                                                                         tmp_path, capsys):
    import eval_tensorrt
    import infer_tensorrt

    embedder = os.path.join(deployment, "model.int8.embed.onnx")
    os.remove(embedder)
    shutil.copy(os.path.join(reseeded, "model.int8.embed.onnx"), embedder)
    paths = scan_folder(tiny_dataset[1]).paths
    argv = {"infer_tensorrt": ["--image1", paths[0], "--image2", paths[1]],
            "eval_tensorrt": ["-v", tiny_dataset[1], "-o", str(tmp_path / "eval")],
            "identify": ["--gallery", tiny_dataset[1], "--query", paths[0]]}[script]
    main = {"infer_tensorrt": infer_tensorrt.main, "eval_tensorrt": eval_tensorrt.main, "identify": identify.main}[script]
    assert main([*argv, "-m", os.path.join(deployment, "model.int8.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"model.int8.embed.onnx' is not of the export of '.*model.int8.onnx'", err[0]), err
    assert "make the export again" in err[0]


def test_an_export_without_ids_runs_and_an_engine_carries_the_id(deployment, tiny_dataset):
    from siamese.contract import EXPORT_ID, onnx_metadata

    int8 = os.path.join(deployment, "model.int8.onnx")
    ids = {onnx_metadata(part_path(path, part))[EXPORT_ID] for path in (int8, os.path.join(deployment, "model.onnx"))
           for part in PARTS}
    assert len(ids) == 2  # one for the float export, one for its INT8 copy
    engine = os.path.join(deployment, "model.int8.engine")
    build_engine_file(int8, engine, EngineBuild(min_batch=1, opt_batch=2, max_batch=4), trt=make_fake_tensorrt("10.9.0"),
                      **QUIET)
    import json

    assert json.load(open(engine + ".json"))[EXPORT_ID] == onnx_metadata(int8)[EXPORT_ID]
    for part in PARTS:  # an export of an earlier version: nothing to compare
        model = onnx.load(part_path(int8, part))
        kept = [p for p in model.metadata_props if p.key != EXPORT_ID]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        onnx.save(model, part_path(int8, part) + ".new")
        os.replace(part_path(int8, part) + ".new", part_path(int8, part))
    assert load_deployed_model(int8).embed_paths([scan_folder(tiny_dataset[1]).paths[0]]).shape == (1, 512)
