"""split.py: a class-disjoint, seeded split written as links; and the warnings for a folder given
one level too high."""

import json
import os

import split
from conftest import make_folder
from siamese.images import scan_folder


def test_split_is_class_disjoint_seeded_and_links_the_class_folders(tmp_path, capsys):
    data = make_folder(str(tmp_path / "photos"), classes=6, per_class=3)
    before = sorted(os.listdir(data))
    out = str(tmp_path / "data")
    assert split.main([data, "-o", out, "--val-classes", "2", "--seed", "1"]) == 0
    assert "val: 2 classes, 6 images" in capsys.readouterr().out
    record = json.load(open(os.path.join(out, "split.json")))
    train, val = record["classes"]["train"], record["classes"]["val"]
    assert len(val) == 2 and len(train) == 4 and not set(train) & set(val) and sorted(train + val) == before
    for name in val:  # links, nothing copied, and they read as the same images
        link = os.path.join(out, "val", name)
        assert os.path.islink(link) and os.path.samefile(link, os.path.join(data, name))
    assert scan_folder(os.path.join(out, "val")).classes == val
    assert sorted(os.listdir(data)) == before and not os.path.exists(os.path.join(out, "test"))
    # the same seed draws the same classes, another seed other classes (for some seed)
    again = str(tmp_path / "again")
    assert split.main([data, "-o", again, "--val-classes", "2", "--seed", "1"]) == 0
    assert json.load(open(os.path.join(again, "split.json")))["classes"] == record["classes"]
    others = []
    for seed in range(2, 6):
        path = str(tmp_path / f"s{seed}")
        assert split.main([data, "-o", path, "--val-classes", "0.34", "--test-classes", "2", "--seed", str(seed)]) == 0
        others.append(json.load(open(os.path.join(path, "split.json")))["classes"])
    assert any(o["val"] != val for o in others)
    assert all(len(o["test"]) == 2 and len(o["train"]) == 2 and not set(o["test"]) & set(o["val"]) for o in others)


def test_split_refusals_write_nothing(tmp_path, capsys):
    data = make_folder(str(tmp_path / "photos"), classes=4, per_class=2)
    out = str(tmp_path / "data")
    assert split.main([data, "-o", out, "--val-classes", "1"]) == 2
    assert "validation needs at least 2" in capsys.readouterr().err
    assert split.main([data, "-o", out, "--val-classes", "3"]) == 2
    assert "the train split would have 1 class(es) of 4" in capsys.readouterr().err
    assert split.main([data, "-o", os.path.join(data, "split")]) == 2  # inside the folder it reads
    capsys.readouterr()
    assert not os.path.exists(out) and sorted(os.listdir(data)) == [f"class_{c}" for c in range(4)]
    assert split.main([data, "-o", out, "--val-classes", "2"]) == 0
    first = open(os.path.join(out, "split.json")).read()
    assert split.main([data, "-o", out, "--val-classes", "2", "--seed", "7"]) == 2
    assert "already exists" in capsys.readouterr().err and open(os.path.join(out, "split.json")).read() == first


def test_a_folder_given_one_level_too_high_is_warned_of(tmp_path, capsys):
    root = tmp_path / "mydata"
    make_folder(str(root / "train"), classes=2, per_class=2)
    make_folder(str(root / "val"), classes=2, per_class=2, seed=1)
    folder = scan_folder(str(root), what="training folder")
    err = capsys.readouterr().err
    assert folder.classes == ["train", "val"]
    assert "has classes named 'train', 'val': is it the parent of the splits?" in err
    assert "2 of 2 classes (such as 'train') keep their images only in sub-folders" in err
    scan_folder(str(root / "train"), what="training folder")
    assert capsys.readouterr().err == ""  # a proper folder: no warning
