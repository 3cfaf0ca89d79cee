import pytest

from siamese.errors import UserError
from siamese.images import scan_folder
from siamese.pairs import draw_partner, evaluation_pairs, one_shot_trials, read_pairs_csv, rng_for


def _labels(sizes):
    labels = [c for c, n in enumerate(sizes) for _ in range(n)]
    by_class = [[i for i, l in enumerate(labels) if l == c] for c in range(len(sizes))]
    return labels, by_class


def test_partner_rule_is_balanced_and_correct():
    labels, by_class = _labels([5, 7, 3, 9])
    same_count = 0
    total = 0
    for seed in range(50):
        for index in range(len(labels)):
            partner, same = draw_partner(rng_for(seed, 0, index), index, labels, by_class)
            assert partner != index
            assert same == (labels[partner] == labels[index])
            same_count += same
            total += 1
    assert abs(same_count / total - 0.5) < 0.03


def test_class_with_one_image_gets_different_partners():
    labels, by_class = _labels([1, 4])
    for seed in range(20):
        partner, same = draw_partner(rng_for(seed), 0, labels, by_class)
        assert not same and labels[partner] == 1


def test_evaluation_pairs_are_a_function_of_files_and_seed(tiny_folder):
    folder = scan_folder(tiny_folder)
    a = evaluation_pairs(folder, seed=1, pairs_per_image=2)
    b = evaluation_pairs(scan_folder(tiny_folder), seed=1, pairs_per_image=2)
    c = evaluation_pairs(folder, seed=2, pairs_per_image=2)
    assert a == b
    assert a != c
    assert len(a) == 2 * len(folder)


def test_pair_csv_reads_the_shared_format(tiny_folder, tmp_path):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("left,right,same\ndata/class_0/img_00.png,data/class_0/img_01.png,1\n"
                        "class_0/img_00.png,class_1/img_00.png,0\n")
    pairs = read_pairs_csv(str(csv_path), tiny_folder)
    assert [p.same for p in pairs] == [True, False]
    assert pairs[1].right.endswith("class_1/img_00.png")


def test_pair_csv_from_a_spreadsheet(tiny_folder, tmp_path):
    """Byte-order mark and Windows line ends, as spreadsheets save CSV files."""
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfleft,right,same\r\nclass_0/img_00.png,class_0/img_01.png,1\r\n"
                         b"class_0/img_00.png,class_1/img_00.png,0\r\n")
    assert [p.same for p in read_pairs_csv(str(csv_path), tiny_folder)] == [True, False]
    csv_path.write_bytes("left,right,same\nclass_0/é.png,class_1/img_00.png,0\n".encode("latin-1"))
    with pytest.raises(UserError, match="is not UTF-8 text; save it as UTF-8 CSV"):
        read_pairs_csv(str(csv_path), tiny_folder)


@pytest.mark.parametrize("text, message", [
    ("a,b\n", "header"),
    ("left,right,same\nclass_0/img_00.png,class_0/img_01.png,yes\n", "line 2"),
    ("left,right,same\nclass_0/img_00.png,class_0/nope.png,1\nclass_0/img_00.png,class_1/img_00.png,0\n", "nope.png"),
    ("left,right,same\nclass_0/img_00.png,class_0/img_01.png,1\n", "only same"),
])
def test_bad_pair_csv(tiny_folder, tmp_path, text, message):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text(text)
    with pytest.raises(UserError, match=message):
        read_pairs_csv(str(csv_path), tiny_folder)


def test_one_shot_trials(tiny_folder):
    folder = scan_folder(tiny_folder)
    trials = one_shot_trials(folder, n_way=3, trials=30, seed=0)
    assert trials == one_shot_trials(folder, n_way=3, trials=30, seed=0)
    for t in trials:
        classes = [folder.labels[folder.paths.index(c)] for c in t.candidates]
        query_class = folder.labels[folder.paths.index(t.query)]
        assert len(set(classes)) == 3
        assert classes[t.answer] == query_class
        assert t.candidates[t.answer] != t.query
    assert len({t.answer for t in trials}) > 1  # the right answer is not always in the same place
    with pytest.raises(UserError, match="needs 5 classes"):
        one_shot_trials(folder, n_way=5, trials=1, seed=0)
