"""Cross-validation over classes: which classes form a group (an alphabet, a person photographed
in several folders) and which groups each fold holds out.

A figure measured on the classes that settings were chosen on tells how well they fit those
classes; one averaged over folds of held-out classes tells how well they carry over.
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
        if not os.path.isfile(csv_path):
            raise UserError(f"--group-csv '{csv_path}' does not exist; give a CSV with the header 'class,group'")
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
        if not rows or [h.strip().lower() for h in rows[0][:2]] != ["class", "group"]:
            raise UserError(f"--group-csv '{csv_path}' must start with the header 'class,group'")
        table = {row[0].strip(): row[1].strip() for row in rows[1:] if len(row) >= 2 and row[0].strip()}
        missing = [name for name in classes if name not in table]
        if missing:
            raise UserError(f"--group-csv '{csv_path}' has no group for {len(missing)} class(es), such as "
                            f"'{missing[0]}'; give every class a row")
        return [table[name] for name in classes]
    return list(classes)


def class_folds(classes, groups, *, folds, seed):
    """`folds` lists of held-out class names, disjoint and together covering every class, whole
    groups at a time, balanced by the number of classes. A function of (classes, groups, folds,
    seed) alone."""
    members = {}
    for name, group in zip(classes, groups):
        members.setdefault(group, []).append(name)
    if folds < 2:
        raise UserError(f"--folds must be at least 2, not {folds}")
    if len(members) < folds:
        raise UserError(f"{folds} folds need at least {folds} groups of classes, but there are {len(members)}; "
                        f"lower --folds")
    rng = np.random.default_rng([int(seed), 7_000_003])
    names = sorted(members)
    order = [names[i] for i in rng.permutation(len(names))]
    order.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the seeded order
    held_out = [[] for _ in range(folds)]
    for group in order:  # the largest groups first, each to the fold with the fewest classes so far
        smallest = min(range(folds), key=lambda f: len(held_out[f]))
        held_out[smallest] += members[group]
    return [sorted(fold) for fold in held_out]
