"""Cross-validation over classes: which classes form a group (an alphabet, a person photographed
in several folders) and which groups each fold holds out.

A figure measured on the classes that settings were chosen on tells how well they fit those
classes; one averaged over folds of held-out classes tells how well they carry over, but once
settings are picked by those folds' figures, the folds flatter them too. So an outer set of classes
(`holdout_classes`) can be kept out of every fold: no training run or choice sees it, and the
settings the folds chose are scored on it once.
"""

import csv
import os
import re

import numpy as np

from .errors import UserError


def class_groups(classes, *, regex=None, csv_path=None):
    """The group of each class: its own name by default; the first capture group (or the whole
    match) of `regex` searched in the name; or the `group` column of a CSV `class,group`."""
    if regex is not None and csv_path is not None:
        raise UserError("give --group-regex or --group-csv, not both")
    if regex is not None:
        try:
            pattern = re.compile(regex)
        except re.error as error:
            raise UserError(f"--group-regex '{regex}' is not a regular expression ({error})") from None
        groups = []
        for name in classes:
            found = pattern.search(name)
            if found is None:
                raise UserError(f"--group-regex '{regex}' does not match class '{name}'; every class needs a group")
            groups.append(found.group(1) if pattern.groups else found.group(0))
        return groups
    if csv_path is not None:
        return _groups_from_csv(classes, csv_path)
    return list(classes)


def _groups_from_csv(classes, csv_path):
    """The `group` column of a CSV `class,group` for each class; refused, with the line, a row
    naming a class that is not among `classes` (a misspelling, or the table of other data) or a
    class named twice."""
    if not os.path.isfile(csv_path):
        raise UserError(f"--group-csv '{csv_path}' does not exist; give a CSV with the header 'class,group'")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError:
        raise UserError(f"--group-csv '{csv_path}' is not UTF-8 text; save it as UTF-8 CSV") from None
    if not rows or [h.strip().lower() for h in rows[0][:2]] != ["class", "group"]:
        raise UserError(f"--group-csv '{csv_path}' must start with the header 'class,group'")
    table, lines = {}, {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 2 or not row[0].strip():
            continue
        name = row[0].strip()
        if name in table:
            raise UserError(f"--group-csv '{csv_path}' line {line} names class '{name}' again (line {lines[name]}); "
                            f"give each class one row")
        table[name], lines[name] = row[1].strip(), line
    missing = [name for name in classes if name not in table]
    if missing:
        raise UserError(f"--group-csv '{csv_path}' has no group for {len(missing)} class(es), such as "
                        f"'{missing[0]}'; give every class a row")
    unknown = sorted(set(table) - set(classes), key=lines.get)
    if unknown:
        raise UserError(f"--group-csv '{csv_path}' line {lines[unknown[0]]} names class '{unknown[0]}', which is not a "
                        f"class folder here; correct the name or remove the line")
    return [table[name] for name in classes]


def _members(classes, groups):
    members = {}
    for name, group in zip(classes, groups):
        members.setdefault(group, []).append(name)
    return members


def holdout_classes(classes, groups, *, count, seed):
    """About `count` class names (whole groups, drawn in a seeded order until there are at least
    `count`) kept out of every fold: the outer test set. A function of (classes, groups, count,
    seed) alone, and drawn from its own generator, so other fold seeds or repeats keep it."""
    members = _members(classes, groups)
    if count < 1:
        raise UserError(f"--holdout-classes must be at least 1, not {count}")
    if count >= len(classes):
        raise UserError(f"--holdout-classes {count} leaves no classes to train on ({len(classes)} in all); "
                        f"hold out fewer")
    rng = np.random.default_rng([int(seed), 9_000_011])
    names = sorted(members)
    chosen = []
    for i in rng.permutation(len(names)):
        if len(chosen) >= count:
            break
        chosen += members[names[i]]
    if len(chosen) >= len(classes):
        raise UserError(f"--holdout-classes {count} takes every group of classes; hold out fewer")
    return sorted(chosen)


def repeated_folds(classes, groups, *, folds, seed, repeats):
    """`repeats` fold assignments (lists of held-out class lists): repeat r uses fold seed
    `seed + r`. Repeat 0 is class_folds(seed); the others place the groups in a seeded order
    rather than largest first, since groups of unequal sizes would otherwise fall into the same
    folds whatever the seed."""
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, not {repeats}")
    return [class_folds(classes, groups, folds=folds, seed=seed + r, largest_first=r == 0) for r in range(repeats)]


def class_folds(classes, groups, *, folds, seed, largest_first=True):
    """`folds` lists of held-out class names, disjoint and together covering every class, whole
    groups at a time, each group to the fold with the fewest classes so far: the largest groups
    first (the best balance; the seed then only orders groups of equal size), or with
    `largest_first=False` in the seeded order. A function of its arguments alone."""
    members = _members(classes, groups)
    if folds < 2:
        raise UserError(f"--folds must be at least 2, not {folds}")
    if len(members) < folds:
        raise UserError(f"{folds} folds need at least {folds} groups of classes, but there are {len(members)}; "
                        f"lower --folds")
    rng = np.random.default_rng([int(seed), 7_000_003])
    names = sorted(members)
    order = [names[i] for i in rng.permutation(len(names))]
    if largest_first:
        order.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the seeded order
    held_out = [[] for _ in range(folds)]
    for group in order:
        smallest = min(range(folds), key=lambda f: len(held_out[f]))
        held_out[smallest] += members[group]
    return [sorted(fold) for fold in held_out]
