"""A hostile user's findings on the data side: link loops and FIFOs in image folders, pair lists
and group tables that contradict the folders, and evaluation figures resting on too few pairs."""

import json
import os
import threading

import numpy as np
import pytest

import split as split_script
from conftest import make_folder
from siamese.errors import UserError
from siamese.evaluate import Evaluation, run_evaluation
from siamese.folds import class_groups
from siamese.identification import query_files
from siamese.images import check_image, load_image, scan_folder
from siamese.pairs import evaluation_pairs, read_pairs_csv
from siamese.settings import EvaluationSettings

# --- the folder scan: each real folder once; FIFOs are not images ---------------------------------


def test_a_link_loop_is_skipped_with_a_warning_not_a_class_of_every_image(tmp_path, capsys):
    root = make_folder(str(tmp_path / "train"))
    os.symlink(".", os.path.join(root, "loop"))  # ln -s . train/loop
    os.symlink("..", os.path.join(root, "up"))  # a link to the parent: train/ again, and its siblings
    folder = scan_folder(root)
    assert folder.classes == ["class_0", "class_1", "class_2"] and len(folder) == 18
    err = capsys.readouterr().err
    assert "skipped '" + os.path.join(root, "loop") + "'" in err and "(a loop)" in err
    assert "skipped '" + os.path.join(root, "up") + "'" in err


def test_a_second_link_to_a_class_folder_is_read_once(tmp_path, capsys):
    root = make_folder(str(tmp_path / "train"))
    os.symlink("class_0", os.path.join(root, "copy_of_0"))  # the same images under two class names
    folder = scan_folder(root)
    assert folder.classes == ["class_0", "class_1", "class_2"]
    real = os.path.realpath(os.path.join(root, "class_0"))
    assert (f"skipped '{os.path.join(root, 'copy_of_0')}': it leads to '{real}', a folder already scanned"
            in capsys.readouterr().err)


def test_a_link_inside_the_folder_never_moves_images_between_classes(tmp_path, capsys):
    """A link to a class folder whose name sorts first, or to one image of another class, is
    skipped: the images stay in their own class, under its own name, and in no other."""
    root = make_folder(str(tmp_path / "train"))
    os.symlink(os.path.join(root, "class_1"), os.path.join(root, "a_class_1"))  # sorts before class_1
    stolen = sorted(os.listdir(os.path.join(root, "class_2")))[0]
    os.symlink(os.path.join(root, "class_2", stolen), os.path.join(root, "class_0", "stolen.png"))
    folder = scan_folder(root)
    assert folder.classes == ["class_0", "class_1", "class_2"]
    groups = folder.images_by_class()
    assert not any("stolen" in folder.paths[i] for i in groups[0])
    assert sorted({os.path.realpath(p) for p in folder.paths}) == sorted(os.path.realpath(p) for p in folder.paths)
    err = capsys.readouterr().err
    assert f"skipped '{os.path.join(root, 'a_class_1')}': it is a link" in err
    assert f"skipped '{os.path.join(root, 'class_0', 'stolen.png')}': it is a link" in err


def test_links_inside_a_class_are_followed_once(tmp_path, capsys):
    """A class may keep a session elsewhere behind a link (followed); a link back up or to another
    class's folder is skipped, naming it."""
    root = make_folder(str(tmp_path / "train"))
    elsewhere = make_folder(str(tmp_path / "elsewhere"), classes=1, per_class=2, seed=5)
    os.symlink(os.path.join(elsewhere, "class_0"), os.path.join(root, "class_1", "session2"))
    os.symlink("..", os.path.join(root, "class_2", "back"))
    os.symlink(os.path.join(root, "class_0"), os.path.join(root, "class_2", "other"))
    folder = scan_folder(root)
    groups = folder.images_by_class()
    assert [len(g) for g in groups] == [6, 8, 6]
    assert sum("session2" in folder.paths[i] for i in groups[1]) == 2
    err = capsys.readouterr().err
    assert os.path.join(root, "class_2", "back") in err and os.path.join(root, "class_2", "other") in err


def test_split_and_the_gallery_scan_leave_the_loop_out(tmp_path, capsys):
    root = make_folder(str(tmp_path / "photos"), classes=5, per_class=2)
    os.symlink(".", os.path.join(root, "loop"))
    assert split_script.main([root, "-o", str(tmp_path / "data"), "--val-classes", "2"]) == 0
    found = sorted(os.listdir(tmp_path / "data" / "train")) + sorted(os.listdir(tmp_path / "data" / "val"))
    assert "loop" not in found and len([n for n in found if n.startswith("class_")]) == 5
    assert "loop" not in scan_folder(root, what="gallery folder", for_pairs=False).classes


def _fifo(path):
    os.mkfifo(path)
    return str(path)


def _no_hang(call):
    """Run call in a thread; fail rather than wait for a FIFO's writer forever."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except Exception as error:  # noqa: BLE001 - handed back to the test
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "hung opening a FIFO"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_a_fifo_is_not_a_regular_file_not_missing(tmp_path, capsys):
    root = make_folder(str(tmp_path / "val"))
    fifo = _fifo(tmp_path / "val" / "class_0" / "pipe.png")
    folder = _no_hang(lambda: scan_folder(root))
    assert fifo not in folder.paths
    assert f"skipped '{fifo}': it is not a regular file (a FIFO)" in capsys.readouterr().err
    for read in (load_image, check_image):
        with pytest.raises(UserError, match="is not a regular file \\(a FIFO\\)") as error:
            _no_hang(lambda: read(fifo))
        assert "does not exist" not in str(error.value)
    with pytest.raises(UserError, match="pipe.png' is not a regular file \\(a FIFO\\)"):  # identify.py --query
        _no_hang(lambda: query_files(fifo))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("left,right,same\nclass_0/pipe.png,class_0/img_00.png,1\nclass_0/img_00.png,class_1/img_00.png,0\n")
    with pytest.raises(UserError, match="pipe.png' is not a regular file"):
        _no_hang(lambda: read_pairs_csv(str(pairs), root))


# --- pair lists and group tables ------------------------------------------------------------------


def _pairs(tmp_path, *lines):
    path = tmp_path / "pairs.csv"
    path.write_text("left,right,same\n" + "".join(line + "\n" for line in lines))
    return str(path)


GOOD = ("class_0/img_00.png,class_0/img_01.png,1", "class_0/img_00.png,class_1/img_00.png,0")


@pytest.mark.parametrize("line, message", [
    ("class_1/img_02.png,class_1/img_02.png,1", "line 4 pairs image 'class_1/img_02.png' with itself"),
    ("class_1/img_02.png,data/class_1/img_02.png,1", "line 4 pairs image .* with itself"),  # one file, two spellings
    ("class_1/img_02.png,class_2/img_02.png,1", "line 4 says same=1, but its images lie in class folders 'class_1' and "
                                                "'class_2'"),
    ("class_1/img_02.png,class_1/img_03.png,0", "line 4 says same=0, but its images lie in class folders 'class_1' both"),
    ("class_1/img_02.png,class_2/img_02.png,0,oops", "line 4: expected three columns"),
])
def test_a_pair_list_that_contradicts_itself_or_the_folders_is_refused(tiny_folder, tmp_path, line, message):
    settings = EvaluationSettings(val_path=tiny_folder, out_path=str(tmp_path / "out"),
                                  pairs_file=_pairs(tmp_path, *GOOD, line))
    with pytest.raises(UserError, match=message):
        run_evaluation(_Scorer(), settings, log=lambda line: None)
    assert not os.path.exists(tmp_path / "out")  # refused before anything is written


def test_the_class_check_covers_class_folders_of_the_scanned_root_only(tmp_path):
    """Paths relative to the folder's parent count when they lead into its class folders; images
    outside them (another split) have no class here, and their label is taken as given."""
    val = make_folder(str(tmp_path / "val"))
    make_folder(str(tmp_path / "train"), seed=4)

    def pairs(*lines):
        settings = EvaluationSettings(val_path=val, out_path=str(tmp_path / "out"), max_pictures=0,
                                      pairs_file=_pairs(tmp_path, *lines))
        return run_evaluation(_Scorer(), settings, log=lambda line: None).pairs

    with pytest.raises(UserError, match="line 3 says same=1"):
        pairs(GOOD[0], "val/class_0/img_02.png,val/class_1/img_02.png,1")
    given = pairs(*GOOD, "train/class_0/img_02.png,val/class_1/img_02.png,1",
                  "class_2/img_00.png,class_2/img_01.png,1,,")  # a spreadsheet's trailing empty cells
    assert [p.same for p in given] == [True, False, True, True]


def test_eval_refuses_a_contradicting_pair_list_before_writing(tmp_path):
    val = make_folder(str(tmp_path / "val"))
    settings = EvaluationSettings(val_path=val, out_path=str(tmp_path / "out"),
                                  pairs_file=_pairs(tmp_path, *GOOD, "class_1/img_00.png,class_2/img_00.png,1"))
    with pytest.raises(UserError, match="line 4 says same=1"):
        run_evaluation(_Scorer(), settings, log=lambda line: None)
    assert not os.path.exists(tmp_path / "out")


def test_a_group_table_naming_classes_that_do_not_exist_is_refused(tmp_path):
    table = tmp_path / "groups.csv"
    table.write_text("class,group\na,x\nb,x\nc,y\nd,y\n")
    with pytest.raises(UserError, match="line 5 names class 'd', which is not a class folder here"):
        class_groups(["a", "b", "c"], csv_path=str(table))
    table.write_text("class,group\na,x\nb,x\nc,y\na,y\n")
    with pytest.raises(UserError, match="line 5 names class 'a' again \\(line 2\\)"):
        class_groups(["a", "b", "c"], csv_path=str(table))
    table.write_bytes("class,group\nä,x\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        class_groups(["a"], csv_path=str(table))


# --- figures resting on enough pairs --------------------------------------------------------------


class _Scorer:
    """A fixed, imperfect scorer: same-class pairs 0.9 and different ones 0.1, but two images of
    each class are confused: img_00 with img_01 (a false reject) and img_03 of every class with
    each other (false accepts)."""

    embeds = True

    def embed_paths(self, paths, progress=False):
        return np.array([[os.path.basename(os.path.dirname(p)), os.path.basename(p)] for p in paths])

    def score_features(self, f1, f2):
        same = f1[:, 0] == f2[:, 0]
        names = {("img_00.png", "img_01.png"), ("img_01.png", "img_00.png")}
        reject = same & np.array([pair in names for pair in zip(f1[:, 1], f2[:, 1])], dtype=bool)
        accept = ~same & (f1[:, 1] == "img_03.png") & (f2[:, 1] == "img_03.png")
        return np.where(reject, 0.2, np.where(accept, 0.8, np.where(same, 0.9, 0.1)))


def test_eval_scores_every_pair_of_a_small_folder_and_draws_the_informative_pictures(tmp_path):
    """The README's step 4: a test split of 20 classes of 4 images. One pair per image gave 80
    pairs and 36 negatives; every pair gives 3,160 and 3,040, with a bounded set of pictures."""
    val = make_folder(str(tmp_path / "test"), classes=20, per_class=4, size=16)
    lines = []
    result = run_evaluation(_Scorer(), EvaluationSettings(val_path=val, out_path=str(tmp_path / "out"), workers=1),
                            log=lines.append)
    assert len(result.pairs) == 3160 and int((~result.labels).sum()) == 3040
    metrics = json.load(open(tmp_path / "out" / "metrics.json"))
    assert (metrics["pairs"], metrics["negative_pairs"], metrics["eval_pairs"], metrics["pictures"]) == (3160, 3040,
                                                                                                         "all", 200)
    pictures = os.listdir(tmp_path / "out" / "pairs")
    assert len(pictures) == 200
    wrong = int(np.count_nonzero((result.scores >= 0.5) != result.labels))  # 20 false rejects, 190 false accepts
    assert wrong == 210 and all("_wrong" in name for name in pictures)  # the wrong ones first, of both kinds
    assert sum("_same_wrong" in name for name in pictures) == 20
    text = "\n".join(lines)
    assert "every pair of the 80 images" in text and "3040 different" in text
    assert "pictures of 200 of the 3,160 pairs" in text
    assert "too few to resolve" not in text  # TAR at FAR 1e-3 rests on 3,040 negatives


def test_default_pairs_are_bounded_and_a_function_of_files_and_seed(tmp_path):
    from siamese.pairs import default_pairs

    root = make_folder(str(tmp_path / "d"), classes=3, per_class=6)
    every, how, _ = default_pairs(scan_folder(root), seed=1)
    assert len(every) == 153 and how == "all"
    drawn, how, line = default_pairs(scan_folder(root), seed=1, bound=100)  # 153 pairs are beyond it
    assert how == "drawn" and len(drawn) == len(set(drawn)) == 100 and "100 distinct pairs (45 same-class" in line
    assert drawn == default_pairs(scan_folder(root), seed=1, bound=100)[0] != default_pairs(scan_folder(root), seed=2,
                                                                                          bound=100)[0]
    given, how, _ = default_pairs(scan_folder(root), seed=1, pairs_per_image=1)
    assert how == 1 and given == evaluation_pairs(scan_folder(root), seed=1)  # --pairs-per-image as before


def test_pictures_picked_are_the_wrong_ones_then_the_nearest(tmp_path):
    from siamese.pairs import Pair
    from siamese.report import picture_indices

    pairs = [Pair("a", "b", same) for same in (True, True, True, False, False, False)]
    scores = np.array([0.9, 0.45, 0.2, 0.1, 0.55, 0.95])  # wrong: 1, 2 (same), 4, 5 (different)
    evaluation = Evaluation(pairs=pairs, scores=scores, metrics={})
    assert picture_indices(evaluation, 0.5, 2) == [2, 5]  # the most confidently wrong of each kind
    assert picture_indices(evaluation, 0.5, 4) == [1, 2, 4, 5]
    assert picture_indices(evaluation, 0.5, 5) == [0, 1, 2, 4, 5]  # then the nearest right one, same first
    assert picture_indices(evaluation, 0.5, None) == list(range(6))


def test_crossval_states_how_many_pairs_its_figures_rest_on():
    from siamese.crossval import pairs_line

    assert pairs_line([{"pairs": 80, "positive_pairs": 44}, {"pairs": 90, "positive_pairs": 44}]) == (
        "each fold's figures rest on 80 to 90 held-out pairs, 36 to 46 of them different-class; too few to resolve "
        "FAR 0.001: it needs 1,000")


# --- images known by their content: validation never on training images ------------------------


def test_content_keys_know_a_file_by_its_bytes_not_its_name(tmp_path):
    from siamese.lineage import content_keys, shared_content

    root = make_folder(str(tmp_path / "d"), classes=2, per_class=3)
    a, b, c = (os.path.join(root, "class_0", f"img_0{i}.png") for i in range(3))
    copy, link = str(tmp_path / "copy.png"), str(tmp_path / "link.png")
    with open(a, "rb") as f, open(copy, "wb") as g:
        g.write(f.read())
    os.symlink(a, link)
    keys = content_keys([a, b, copy, link])
    assert keys[0] == keys[2] == keys[3] != keys[1] and all(len(key) == 8 for key in keys)
    known = dict(zip(content_keys([a, c]), [a, c]))
    assert shared_content([b, copy, link], known) == [(copy, a), (link, a)]
    assert shared_content([copy], set(content_keys([a]))) == [(copy, keys[0])]
    os.remove(copy)  # gone since the scan: one line naming it
    with pytest.raises(UserError, match=f"cannot read image '{copy}' \\(No such file or directory\\)"):
        content_keys([a, copy])


def _renamed_classes(root, prefix):
    for name in os.listdir(root):
        os.rename(os.path.join(root, name), os.path.join(root, prefix + name))
    return root


@pytest.mark.parametrize("case", ["same folder", "val among the training folders", "class linked in", "copied image"])
def test_validation_on_training_images_is_refused(tmp_path, capsys, case):
    """The same images under the validation and the training folders, by whatever names, would
    choose best.pth and the threshold on images the model learned: refused before anything is
    written, naming some of them and how many."""
    import train
    from conftest import TINY_TRAIN_ARGS

    train_dir = make_folder(str(tmp_path / "train"), classes=3, seed=1)
    val_dir = _renamed_classes(make_folder(str(tmp_path / "val"), classes=3, seed=2), "v")
    train_paths, val = [train_dir], val_dir
    if case == "same folder":
        val, shared = train_dir, 18
    elif case == "val among the training folders":
        train_paths, shared = [train_dir, val_dir], 18
    elif case == "class linked in":  # a class of the validation folder linked into the training one from outside
        os.symlink(os.path.join(val_dir, "vclass_1"), os.path.join(train_dir, "class_9"))
        shared = 6
    else:  # one validation image copied into a training class under another name
        with open(os.path.join(val_dir, "vclass_2", "img_03.png"), "rb") as f, \
                open(os.path.join(train_dir, "class_0", "extra.png"), "wb") as g:
            g.write(f.read())
        shared = 1
    out = str(tmp_path / "run")
    assert train.main(["--train-path", *train_paths, "--val-path", val, "-o", out, "-e", "1", *TINY_TRAIN_ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert f"validation folder '{val}' shares {shared} of its 18 images with the training data" in err[0]
    assert "such as '" in err[0] and not os.path.exists(out)


def test_eval_says_when_it_scores_the_checkpoints_training_images(trained_checkpoint, tiny_dataset, tmp_path, capsys):
    import eval as eval_script

    out = str(tmp_path / "on_train")
    assert eval_script.main(["-v", tiny_dataset[0], "-o", out, "-c", trained_checkpoint, "--max-pictures", "0"]) == 0
    captured = capsys.readouterr()
    line = "warning: 24 of the 24 images scored are images this model was trained on"
    assert line in captured.err and line in captured.out  # before the scoring, and beside the figures
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["training_overlap"] == {"images": 24, "of": 24}


def test_the_checkpoint_records_its_training_images_compactly(trained_checkpoint, tiny_dataset):
    import torch

    from siamese.checkpoint import load_checkpoint, training_keys
    from siamese.evaluate import training_overlap
    from siamese.lineage import content_keys

    checkpoint = load_checkpoint(trained_checkpoint)  # weights_only
    assert checkpoint["training_images"].dtype == torch.uint8 and checkpoint["training_images"].shape == (24, 8)
    known = training_keys(checkpoint)
    assert known == set(content_keys(scan_folder(tiny_dataset[0]).paths))
    val_pairs = evaluation_pairs(scan_folder(tiny_dataset[1]), seed=0)
    assert training_overlap(val_pairs, None, known) == ({"images": 0, "of": 18}, None)
    old = {k: v for k, v in checkpoint.items() if k != "training_images"}  # written before the record
    assert training_keys(old) is None


# --- copies within one folder set: one image is one image, whatever its names --------------------


def _copy(source, target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(source, "rb") as f, open(target, "wb") as g:
        g.write(f.read())
    return target


def test_the_test_folders_hold_no_two_images_of_one_content(tmp_path):
    """Tiny drawn images often coincide (the same shape at the same place); the generator marks
    each with its class, number and seed, so tests' folders never hold copies by chance."""
    from siamese.content import content_keys

    paths = []
    for seed in (0, 1, 2):
        root = make_folder(str(tmp_path / f"s{seed}"), classes=6, per_class=10, size=12, seed=seed)
        paths += scan_folder(root).paths
    assert len(paths) == 180 and len(set(content_keys(paths))) == 180


def test_a_copy_within_a_class_is_set_aside_once_with_one_line(tmp_path, capsys):
    root = make_folder(str(tmp_path / "val"))
    _copy(os.path.join(root, "class_1", "img_01.png"), os.path.join(root, "class_1", "copy1.png"))
    _copy(os.path.join(root, "class_1", "img_02.png"), os.path.join(root, "class_1", "sub", "zz.png"))
    folder = scan_folder(root)
    assert len(folder) == 18 and os.path.join(root, "class_1", "copy1.png") in folder.paths  # first by sorted path
    assert os.path.join(root, "class_1", "img_01.png") not in folder.paths
    assert len(folder.keys) == 18 and len(set(folder.keys)) == 18
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: image folder '{root}': set aside 2 image(s) that are copies")
    assert not any(pair.left == pair.right for pair in evaluation_pairs(folder, seed=0, pairs_per_image=5))


@pytest.mark.parametrize("how", ["copied class", "one copied image", "gallery"])
def test_one_content_in_two_classes_is_refused(tmp_path, how):
    """A class copied under a new name (cp -r s1 s1copy), or one image in two classes: its pairs
    would be scored or trained on as different pairs of one image, and a gallery would tie."""
    import shutil

    root = make_folder(str(tmp_path / "val"))
    if how == "copied class":
        shutil.copytree(os.path.join(root, "class_0"), os.path.join(root, "class_0copy"))
    else:
        _copy(os.path.join(root, "class_0", "img_03.png"), os.path.join(root, "class_2", "new.png"))
    count = 6 if how == "copied class" else 1
    with pytest.raises(UserError) as raised:
        scan_folder(root, what="gallery folder" if how == "gallery" else "validation folder",
                    for_pairs=how != "gallery")
    line = str(raised.value)
    assert "\n" not in line and f"{count} image(s) have the content (the same bytes) of an image of another class" in line
    assert "such as '" in line and "remove the copies, or merge the classes" in line


def test_training_folders_whose_classes_are_renamed_copies_are_refused(tmp_path, capsys):
    """train.py --train-path d/train tcopy, tcopy a copy of d/train with its classes renamed."""
    import shutil

    import train
    from conftest import TINY_TRAIN_ARGS

    train_dir = make_folder(str(tmp_path / "train"), classes=3, seed=1)
    copy = _renamed_classes(shutil.copytree(train_dir, str(tmp_path / "tcopy")), "t")
    out = str(tmp_path / "run")
    assert train.main(["--train-path", train_dir, copy, "-o", out, "-e", "1", *TINY_TRAIN_ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert f"the folders '{train_dir}', '{copy}': 18 image(s) have the content" in err[0] and not os.path.exists(out)


def _pair_list(path, line):
    with open(path, "w") as f:
        f.write("left,right,same\nclass_0/img_00.png,class_1/img_00.png,0\n" + line + "\n")
    return str(path)


@pytest.mark.parametrize("where", ["inside the class", "beside the folder"])
def test_a_pair_list_pairing_an_image_with_its_copy_is_refused_with_the_line(tmp_path, where):
    root = make_folder(str(tmp_path / "val"))
    name = "class_2/copy1.png" if where == "inside the class" else "copy1.png"
    _copy(os.path.join(root, "class_2", "img_01.png"), os.path.join(str(tmp_path) if name == "copy1.png" else root, name))
    csv_path = _pair_list(tmp_path / "pairs.csv", f"class_2/img_01.png,{name},1")
    with pytest.raises(UserError, match=f"line 3 pairs image 'class_2/img_01.png' with '{name}', a copy of it "
                                        f"\\(the same file content\\)"):
        read_pairs_csv(csv_path, root, scan_folder(root))


def test_a_pair_list_repeating_a_pair_through_a_copy_is_refused(tmp_path):
    root = make_folder(str(tmp_path / "val"))
    _copy(os.path.join(root, "class_2", "img_01.png"), str(tmp_path / "copy1.png"))
    csv_path = _pair_list(tmp_path / "pairs.csv", "class_0/img_00.png,copy1.png,0\nclass_2/img_01.png,class_0/img_00.png,0")
    with pytest.raises(UserError, match="line 4 repeats the pair of line 3"):
        read_pairs_csv(csv_path, root, scan_folder(root))


def test_an_evaluation_hashes_each_image_once(tmp_path, monkeypatch):
    """The scan's content keys serve the pair list and the training-overlap count: no image is
    read for its hash twice."""
    import siamese.content as content
    from siamese.evaluate import evaluation_inputs, training_overlap

    root = make_folder(str(tmp_path / "val"))
    csv_path = _pair_list(tmp_path / "pairs.csv", "class_2/img_01.png,class_2/img_02.png,1")
    hashed, sha256 = [], content._sha256
    monkeypatch.setattr(content, "_sha256", lambda path: hashed.append(os.path.abspath(path)) or sha256(path))
    for pairs_file in (None, csv_path):
        hashed.clear()
        settings = EvaluationSettings(val_path=root, out_path=str(tmp_path / "out"), pairs_file=pairs_file)
        folder, pairs, _, shots = evaluation_inputs(settings, log=lambda line: None)
        training_overlap(pairs, shots, set(), folder=folder)
        assert len(hashed) == len(set(hashed)) == 18
