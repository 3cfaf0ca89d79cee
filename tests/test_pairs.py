import pytest
from hypothesis import given, settings, strategies as st

from siamese.errors import UserError
from siamese.images import ImageFolder, scan_folder
from siamese.pairs import default_pairs, draw_partner, evaluation_pairs, one_shot_trials, read_pairs_csv, rng_for


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


def _folder(sizes):
    """A folder of classes of these sizes (paths only: the pair functions open no image)."""
    labels = [c for c, n in enumerate(sizes) for _ in range(n)]
    return ImageFolder("/d", [f"c{c}" for c in range(len(sizes))], [f"/d/c{c}/{i}.png" for i, c in enumerate(labels)],
                       labels)


def _check_distinct_and_counted(folder, pairs, line):
    """Each unordered pair once, no image with itself, `same` as the folders say, and the line's
    counts those of the pairs returned."""
    label = dict(zip(folder.paths, folder.labels))
    assert len({frozenset((p.left, p.right)) for p in pairs}) == len(pairs)
    assert all(p.left != p.right for p in pairs)
    assert all(p.same == (label[p.left] == label[p.right]) for p in pairs)
    same = sum(p.same for p in pairs)
    assert f"{len(pairs):,} distinct pairs ({same:,} same-class, {len(pairs) - same:,} different-class)" in line
    return same


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.integers(1, 9), min_size=2, max_size=8), bound=st.integers(1, 150),
       seed=st.integers(0, 2 ** 32 - 1))
def test_default_pairs_are_distinct_and_counted_on_both_sides_of_the_bound(sizes, bound, seed):
    folder = _folder(sizes)
    pairs, how, line = default_pairs(folder, seed=seed, bound=bound)
    n = len(folder.paths)
    total, same_total = n * (n - 1) // 2, sum(k * (k - 1) // 2 for k in sizes)
    same = _check_distinct_and_counted(folder, pairs, line)
    assert len(pairs) == min(total, bound) and how == ("all" if total <= bound else "drawn")
    if how == "drawn":  # half same-class, or every same-class pair when fewer (more when few are different)
        assert same == min(same_total, max(bound // 2, bound - (total - same_total)))
    else:
        assert same == same_total
    assert default_pairs(_folder(sizes), seed=seed, bound=bound) == (pairs, how, line)  # a function of files and seed


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 9), min_size=2, max_size=8), per_image=st.integers(1, 40),
       seed=st.integers(0, 2 ** 32 - 1))
def test_pairs_per_image_are_distinct_and_counted(sizes, per_image, seed):
    folder = _folder(sizes)
    pairs, how, line = default_pairs(folder, seed=seed, pairs_per_image=per_image)
    _check_distinct_and_counted(folder, pairs, line)
    assert how == per_image and pairs == evaluation_pairs(_folder(sizes), seed=seed, pairs_per_image=per_image)
    n = len(folder.paths)
    for image in folder.paths:  # the left side of per_image pairs, or paired with every other image
        left = sum(p.left == image for p in pairs)
        partners = sum(image in (p.left, p.right) for p in pairs)
        assert left == per_image or (left < per_image and partners == n - 1)


def test_pairs_beyond_the_bound_are_each_scored_once():
    """47 classes of 3 images make 9,870 pairs, all scored; one image more made 9,940 pairs drawn 70
    per image, each same-class pair about 34 times over."""
    every, how, _ = default_pairs(_folder([3] * 47), seed=1)
    assert (len(every), how, sum(p.same for p in every)) == (9870, "all", 141)
    drawn, how, line = default_pairs(_folder([4] + [3] * 46), seed=1)
    assert (len(drawn), how) == (10_000, "drawn") and _check_distinct_and_counted(_folder([4] + [3] * 46), drawn,
                                                                                 line) == 144  # every same-class pair
    many, _, line = default_pairs(_folder([20] * 300), seed=1)  # 57,000 same-class pairs: half the pairs scored
    assert len(many) == 10_000 and _check_distinct_and_counted(_folder([20] * 300), many, line) == 5_000
    assert "half of them same-class" in line and "from the 17,997,000 pairs of the 6000 images" in line


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=2, max_size=5), n_way=st.integers(2, 5), trials=st.integers(1, 60),
       seed=st.integers(0, 2 ** 32 - 1))
def test_one_shot_trials_are_distinct(sizes, n_way, trials, seed):
    if n_way > len(sizes) or max(sizes) < 2:
        return
    drawn = one_shot_trials(_folder(sizes), n_way=n_way, trials=trials, seed=seed)
    assert 1 <= len(drawn) <= trials
    assert len({(t.query, frozenset(t.candidates)) for t in drawn}) == len(drawn)
    assert drawn == one_shot_trials(_folder(sizes), n_way=n_way, trials=trials, seed=seed)


def test_a_small_folder_gives_its_distinct_trials_once_each():
    """Two classes of two images hold 8 distinct 2-way trials; 400 were counted, each about 50 times."""
    assert len(set(one_shot_trials(_folder([2, 2]), n_way=2, trials=400, seed=1))) == 8
