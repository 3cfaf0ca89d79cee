"""Which images are paired: the training rule, fixed evaluation pairs, pair lists, one-shot trials.

Every draw comes from a local generator seeded by explicit numbers, so the pairs are a pure
function of the files and the seed (eval.py and eval_tensorrt.py score the same pairs).
"""

import bisect
import csv
import os
from dataclasses import dataclass

import numpy as np

from .errors import UserError


def rng_for(*keys):
    """A generator determined by the given non-negative integers alone."""
    return np.random.default_rng([int(k) for k in keys])


def draw_partner(rng, index, labels, by_class):
    """The original's rule: same class with probability 0.5, else a random other class.

    Returns (partner index, same). A class with one image cannot make a same pair, so its
    images always get a different-class partner.
    """
    label = labels[index]
    same = rng.random() < 0.5 and len(by_class[label]) > 1
    if same:
        group = by_class[label]  # ascending indices, so bisect finds this image's place
        pick = int(rng.integers(len(group) - 1))
        if pick >= bisect.bisect_left(group, index):
            pick += 1
        partner = group[pick]
        return partner, True
    other = int(rng.integers(len(by_class) - 1))
    other = other if other < label else other + 1
    group = by_class[other]
    return group[int(rng.integers(len(group)))], False


@dataclass(frozen=True)
class Pair:
    left: str
    right: str
    same: bool


def evaluation_pairs(folder, *, seed, pairs_per_image=1):
    """Fixed pairs, each unordered pair at most once: image after image, each is the left side of
    up to pairs_per_image pairs whose partners the training rule (draw_partner) draws among the
    images it is not yet paired with, on either side. A draw that repeats a pair is drawn again;
    after REDRAWS of them the partner is drawn among all the images still free. An image whose
    partners run out gets fewer pairs: count what this returns, not images x pairs_per_image."""
    by_class, labels = folder.images_by_class(), folder.labels
    paired = [set() for _ in labels]  # the partners of each image so far, on either side
    pairs = []
    for index in range(len(folder)):
        for partner in _free_partners(seed, index, pairs_per_image, labels, by_class, paired):
            paired[index].add(partner)
            paired[partner].add(index)
            pairs.append(Pair(folder.paths[index], folder.paths[partner], labels[index] == labels[partner]))
    return pairs


REDRAWS = 8  # draws of the training rule before a partner is drawn among the free images alone


def _free_partners(seed, index, count, labels, by_class, paired):
    """Up to `count` partners of image `index` that it is not yet paired with (paired[index] is
    updated by the caller; `free` is the list of images still free once the rule kept repeating)."""
    taken, found, free = set(paired[index]), [], None
    for k in range(count):
        if len(taken) >= len(labels) - 1:
            break  # paired with every other image already
        rng = rng_for(seed, index, k)
        partner = None
        if free is None:
            for _ in range(REDRAWS):
                partner, _ = draw_partner(rng, index, labels, by_class)
                if partner not in taken:
                    break
                partner = None
            if partner is None:
                free = [j for j in range(len(labels)) if j != index and j not in taken]
        if partner is None:
            partner = free.pop(int(rng.integers(len(free))))
        taken.add(partner)
        found.append(partner)
    return found


def all_pairs(folder):
    """Every unordered pair of distinct images: the exhaustive (lowest-variance) pair list for a
    small held-out set; n(n-1)/2 pairs, mostly different-class ones."""
    paths, labels = folder.paths, folder.labels
    return [Pair(paths[i], paths[j], labels[i] == labels[j]) for i in range(len(paths)) for j in range(i + 1, len(paths))]


def pair_counts(labels):
    """(all pairs, same-class pairs) of images with these class labels."""
    n = len(labels)
    sizes = np.bincount(np.asarray(labels, dtype=np.int64)) if n else np.zeros(0, np.int64)
    return n * (n - 1) // 2, int(np.sum(sizes * (sizes - 1) // 2))


def drawn_pairs(folder, *, seed, count):
    """`count` distinct unordered pairs of distinct images (all of them when the folder makes no
    more), drawn without replacement, seeded: as many same-class as different-class pairs (the
    same-class ones count // 2), or every same-class pair when the folder has fewer, the rest
    different-class (and more same-class ones when it has too few different-class pairs). Within
    each kind every pair is equally likely. In the order all_pairs gives them."""
    labels = np.asarray(folder.labels, dtype=np.int64)
    total, same_total = pair_counts(labels)
    count = min(count, total)
    same = min(same_total, max(count // 2, count - (total - same_total)))
    # Images in class order: a class is one run of positions, so the partners of position p are a
    # range of positions above it: its class's rest (same) or every later class (different).
    order = np.argsort(labels, kind="stable")
    ends = np.cumsum(np.bincount(labels))[labels[order]]  # one past the end of each position's class run
    positions = np.arange(len(labels))
    rng = rng_for(seed, 2_000_003)
    chosen = [_pick_ranges(rng, positions + 1, ends, same), _pick_ranges(rng, ends, np.full_like(ends, len(labels)),
                                                                         count - same)]
    left, right = (order[np.concatenate([c[k] for c in chosen])] for k in (0, 1))
    left, right = np.minimum(left, right), np.maximum(left, right)
    paths = folder.paths
    return [Pair(paths[i], paths[j], bool(labels[i] == labels[j])) for i, j in sorted(zip(left.tolist(), right.tolist()))]


def _pick_ranges(rng, low, high, count):
    """`count` distinct (p, q) among the pairs with low[p] <= q < high[p], uniformly without
    replacement: pair number t is the t-th of that list of ranges laid end to end."""
    starts = np.concatenate([[0], np.cumsum(np.maximum(high - low, 0))])
    total = int(starts[-1])
    picks = np.arange(total) if count >= total else np.sort(rng.choice(total, size=count, replace=False))
    p = np.searchsorted(starts, picks, side="right") - 1
    return p, low[p] + (picks - starts[p])


# By default eval.py scores every pair of a folder of up to this many pairs (141 images): each image
# is embedded once, so pairs cost only the head (and --baselines' bootstrap, which grows with the
# pairs: 1,000 draws of 18,760 pairs took minutes on 2 loaded cores). 10,000 pairs hold about 9,000
# different-class ones, enough to resolve a false accept rate of 1e-3 (about 9 false accepts).
ALL_PAIRS_BOUND = 10_000


def default_pairs(folder, *, seed, pairs_per_image=None, bound=None):
    """(eval.py's pairs, how they were chosen: 'all', 'drawn' or pairs per image, a line saying so
    with the counts of the pairs returned): with pairs_per_image, up to that many seeded pairs per
    image; by default every pair when there are at most `bound`, else `bound` distinct pairs drawn
    (drawn_pairs). A function of the files and the seed, so eval.py and eval_tensorrt.py score the
    same pairs. bound: ALL_PAIRS_BOUND when None."""
    bound = ALL_PAIRS_BOUND if bound is None else bound
    n = len(folder)
    total, same_total = pair_counts(folder.labels)
    if pairs_per_image is not None:
        pairs = evaluation_pairs(folder, seed=seed, pairs_per_image=pairs_per_image)
        fewer = (f" (fewer than {n:,} x {pairs_per_image:,}: each pair is drawn once, and images ran out of "
                 f"partners)" if len(pairs) < n * pairs_per_image else "")
        return (pairs, pairs_per_image, f"scoring {_counts(pairs)}: up to {pairs_per_image} drawn per image "
                                        f"(--pairs-per-image), each pair once, seed {seed}{fewer}")
    if total <= bound:
        pairs = all_pairs(folder)
        return (pairs, "all", f"scoring {_counts(pairs)}: every pair of the {n} images (up to {bound:,} pairs are all "
                              f"scored; --pairs-per-image N draws N per image instead)")
    pairs = drawn_pairs(folder, seed=seed, count=bound)
    balance = "every same-class pair" if sum(p.same for p in pairs) == same_total else "half of them same-class"
    return (pairs, "drawn", f"scoring {_counts(pairs)}, drawn without repeats (seed {seed}; {balance}) from the "
                            f"{total:,} pairs of the {n} images ({same_total:,} same-class): more than the {bound:,} "
                            f"scored whole (--pairs-per-image N draws N per image instead)")


def _counts(pairs):
    same = sum(p.same for p in pairs)
    return f"{len(pairs):,} distinct pairs ({same:,} same-class, {len(pairs) - same:,} different-class)"


def _pair_rows(csv_path):
    """The rows of a pair list after its header, with their line numbers; trailing empty cells
    (a spreadsheet's) dropped, blank lines left out."""
    if not os.path.isfile(csv_path):
        raise UserError(f"pair list '{csv_path}' does not exist")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:  # -sig: the byte-order mark spreadsheets write
            rows = [_trimmed(row) for row in csv.reader(handle)]
    except UnicodeDecodeError:
        raise UserError(f"pair list '{csv_path}' is not UTF-8 text; save it as UTF-8 CSV") from None
    if not rows or [h.strip().lower() for h in rows[0]] != ["left", "right", "same"]:
        raise UserError(f"pair list '{csv_path}' must start with the header 'left,right,same' (three columns)")
    return [(line, row) for line, row in enumerate(rows[1:], start=2) if row]


def _trimmed(row):
    while row and not row[-1].strip():
        row = row[:-1]
    return row


def _resolve(csv_path, line, rel, root):
    """A pair list's path: relative to root or to its parent, and inside it."""
    rel = rel.strip()
    if os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
        raise UserError(f"pair list '{csv_path}' line {line}: '{rel}' must be a path relative to '{root}' (or to "
                        f"its parent) that stays inside it: no absolute paths, no '..'")
    for base in (root, os.path.dirname(os.path.abspath(root))):
        if os.path.lexists(os.path.join(base, rel)):
            return os.path.normpath(os.path.join(base, rel))
    raise UserError(f"pair list '{csv_path}' line {line}: image '{rel}' not found under '{root}'")


def read_pairs_csv(csv_path, root, folder=None):
    """A pair list `left,right,same` with paths relative to root (or to its parent).

    The shared datasets' pairs.csv lists paths like `val/Class/img.png` relative to the
    dataset folder; paths relative to the validation folder itself work too. Refused, with the
    line: a row of other than three columns, an image paired with itself (or with a copy of
    itself: images are known by their content) or a pair listed twice (either would count in
    every metric), and, where both images lie in class folders of `folder` (root's scan), a
    `same` that their folders contradict.
    """
    label = {os.path.abspath(p): c for p, c in zip(folder.paths, folder.labels)} if folder else {}
    known = dict(zip(label, folder.image_keys())) if folder else {}  # the scan's keys: no image hashed twice
    pairs, seen = [], {}
    for line, row in _pair_rows(csv_path):
        where = f"pair list '{csv_path}' line {line}"
        if len(row) != 3 or row[2].strip() not in ("0", "1"):
            raise UserError(f"{where}: expected three columns 'left,right,same' with same 0 or 1, got {','.join(row)!r}")
        left, right = (_resolve(csv_path, line, rel, root) for rel in row[:2])
        same = row[2].strip() == "1"
        key = tuple(sorted(_content_key(path, known) for path in (left, right)))
        if key[0] == key[1]:
            raise UserError(f"{where} pairs image '{row[0].strip()}' with "
                            + ("itself" if os.path.realpath(left) == os.path.realpath(right) else
                               f"'{row[1].strip()}', a copy of it (the same file content)")
                            + ", which any model calls the same; remove the line")
        if key in seen:  # it would count twice in every metric
            raise UserError(f"{where} repeats the pair of line {seen[key]} (the same two images, known by their "
                            f"content); list each pair once")
        classes = [label.get(os.path.abspath(p)) for p in (left, right)]
        if None not in classes and (classes[0] == classes[1]) != same:
            names = [folder.classes[c] for c in classes]
            raise UserError(f"{where} says same={int(same)}, but its images lie in class folders "
                            + (f"'{names[0]}' and '{names[1]}'" if names[0] != names[1] else f"'{names[0]}' both")
                            + "; correct the line or move the image")
        seen[key] = line
        pairs.append(Pair(left, right, same))
    if not pairs:
        raise UserError(f"pair list '{csv_path}' has no pairs")
    from .images import check_image

    for path in sorted({p for pair in pairs for p in (pair.left, pair.right)}):
        check_image(path)  # before anything is written
    if len({p.same for p in pairs}) < 2:
        raise UserError(f"pair list '{csv_path}' has only {'same' if pairs[0].same else 'different'}-class pairs; metrics need both")
    return pairs


def _content_key(path, known):
    """A pair list image's content key: its scan's, or hashed now and kept in `known`."""
    from .content import content_keys
    from .images import check_image

    path = os.path.abspath(path)
    if path not in known:
        check_image(path)  # a file, and an image: a FIFO is never read
        known[path] = content_keys([path])[0]
    return known[path]


@dataclass(frozen=True)
class OneShotTrial:
    query: str
    candidates: tuple  # one support image per class; candidates[answer] is the query's class
    answer: int


def one_shot_trials(folder, *, n_way, trials, seed, groups=None):
    """Koch et al. (2015) N-way one-shot trials, seeded.

    Each trial picks n_way classes (the first among those with two images), a query and a
    different support image from the first class, one support image from each other class.
    With `groups` (the group of each class, such as its alphabet) all n_way classes of a trial
    come from one group, the harder protocol of Lake et al. (2015): the group is drawn first,
    among those with n_way classes. Each trial (a query and its set of candidates) at most once:
    a draw that repeats one is drawn again, and a folder that holds fewer distinct trials than
    asked gives fewer (count what this returns).
    """
    by_class = folder.images_by_class()
    if n_way < 2:
        raise UserError(f"--n-way must be at least 2, got {n_way}")
    if trials < 1:
        raise UserError(f"--trials must be at least 1 with --n-way, not {trials}")
    if n_way > len(by_class):
        raise UserError(f"--n-way {n_way} needs {n_way} classes, but the folder has {len(by_class)}")
    if groups is None:
        pools = [list(range(len(by_class)))]
    else:
        members = {}
        for c, group in enumerate(groups):
            members.setdefault(group, []).append(c)
        pools = [classes for _, classes in sorted(members.items())
                 if len(classes) >= n_way and any(len(by_class[c]) >= 2 for c in classes)]
        if not pools:
            raise UserError(f"--n-way {n_way} within a group needs a group of at least {n_way} classes, but the largest "
                            f"has {max(len(c) for c in members.values())}; lower --n-way")
    result, seen, t, repeats = [], set(), 0, 0
    while len(result) < trials and repeats < TRIAL_REPEATS:  # a small folder holds few distinct trials
        trial = _one_trial(rng_for(seed, 1_000_003, t), folder, by_class, pools, n_way)
        t += 1
        key = (trial.query, frozenset(trial.candidates))  # the order of the candidates changes no score
        repeats = repeats + 1 if key in seen else 0
        if key not in seen:
            seen.add(key)
            result.append(trial)
    return result


TRIAL_REPEATS = 1000  # draws in a row that only repeat trials drawn before: the folder holds few more


def _one_trial(rng, folder, by_class, pools, n_way):
    pool = pools[int(rng.integers(len(pools)))] if len(pools) > 1 else pools[0]
    eligible = [c for c in pool if len(by_class[c]) >= 2]
    true_class = eligible[int(rng.integers(len(eligible)))]
    others = [c for c in pool if c != true_class]
    chosen = [true_class] + [others[i] for i in rng.choice(len(others), n_way - 1, replace=False)]
    query, support = rng.choice(by_class[true_class], 2, replace=False)
    candidates = [folder.paths[support]] + [folder.paths[by_class[c][int(rng.integers(len(by_class[c])))]] for c in chosen[1:]]
    order = rng.permutation(n_way)
    candidates = [candidates[i] for i in order]
    answer = int(np.flatnonzero(order == 0)[0])
    return OneShotTrial(folder.paths[query], tuple(candidates), answer)
