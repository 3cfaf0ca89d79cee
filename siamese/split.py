"""A class-disjoint split of one folder of classes into train/ and val/ (and test/), seeded and
written as links to the class folders: nothing is copied or moved, and the split can be drawn
again with another seed in a moment. No torch here.
"""

import os

from .errors import UserError
from .files import atomic_folder, check_not_inside, claim_beside, prepare_output_dir, write_json
from .folds import holdout_classes

SPLITS = ("train", "val", "test")


def class_count(value, total, option):
    """A number of classes from a count (1 or more) or a fraction of `total` (below 1)."""
    if value < 0:
        raise UserError(f"{option} must be a number of classes or a fraction below 1, not {value}")
    return int(round(value * total)) if value < 1 else int(value)


def split_classes(classes, groups, *, val, test=0, seed=0):
    """{'train', 'val', 'test'}: disjoint sorted class lists, whole groups at a time; val and test
    are about `val` and `test` classes, drawn by `seed` (test from what val left)."""
    taken = {"val": [], "test": []}
    rest = list(zip(classes, groups))
    for name, count, offset in (("val", val, 0), ("test", test, 1)):
        if count:
            names, group_of = [c for c, _ in rest], [g for _, g in rest]
            taken[name] = holdout_classes(names, group_of, count=count, seed=seed + offset)
            rest = [(c, g) for c, g in rest if c not in set(taken[name])]
    result = {"train": sorted(c for c, _ in rest), **taken}
    for name in ("train", "val") + (("test",) if test else ()):
        if len(result[name]) < 2:
            raise UserError(f"the {name} split would have {len(result[name])} class(es) of {len(classes)}; a pair "
                            f"model needs at least two in each: change --val-classes/--test-classes")
    return result


def write_split(folder, split, out_path, *, seed):
    """OUT/train/ClassName, OUT/val/ClassName (and OUT/test/) as links to the class folders, and
    OUT/split.json; the folder appears whole or not at all, and an existing one is refused."""
    check_not_inside(out_path, [folder.root], option="-o/--out")
    if os.path.lexists(out_path) and (not os.path.isdir(out_path) or os.listdir(out_path)):
        raise UserError(f"-o/--out '{out_path}' already exists; give a new folder (a split is never written over "
                        f"another)")
    prepare_output_dir(os.path.dirname(os.path.abspath(out_path)))
    source = os.path.abspath(folder.root)
    with claim_beside(out_path, what="split out path"), atomic_folder(out_path) as staging:
        for name, classes in split.items():
            if not classes:
                continue
            os.mkdir(os.path.join(staging, name))
            for class_name in classes:
                os.symlink(os.path.join(source, class_name), os.path.join(staging, name, class_name),
                           target_is_directory=True)
        images = {name: sum(1 for label in folder.labels if folder.classes[label] in set(classes))
                  for name, classes in split.items()}
        write_json(os.path.join(staging, "split.json"),
                   {"source": source, "seed": seed, "classes": split, "images": images})
    return images
