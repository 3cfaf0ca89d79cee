"""A class-disjoint split of one folder of classes into train/ and val/ (and test/), seeded and
written as links to the class folders: nothing is copied or moved, and the split can be drawn
again with another seed in a moment. No torch here.

A class with a single image makes no same-class pair, so it cannot be validated or tested on: it
stays in train/ (with the other classes of its group), where it still gives different-class pairs.
"""

import os

from .errors import UserError
from .files import atomic_folder, check_not_inside, claim_beside, prepare_output_dir, write_json
from .folds import holdout_classes

SPLITS = ("train", "val", "test")


def class_count(value, total):
    """A number of classes from a count (1 or more) or a fraction of `total` (below 1); the
    option's type (options.classes_or_fraction) checked the value."""
    return int(round(value * total)) if value < 1 else int(value)


def single_image_classes(folder):
    """The classes of an ImageFolder that hold one image."""
    return [folder.classes[label] for label, images in enumerate(folder.images_by_class()) if len(images) < 2]


def single_image_note(singles, *, grouped=False):
    """The line that names the classes of a single image, which stay in train/."""
    named = ", ".join(f"'{name}'" for name in singles[:5]) + (f" and {len(singles) - 5} more" * (len(singles) > 5))
    return (f"note: {len(singles)} class(es) with a single image ({named}) stay in train/"
            f"{', with the other classes of their group' if grouped else ''}: a class needs two images to be validated "
            f"or tested on")


def _draw(rest, count, seed):
    """About `count` of the (class, group) pairs `rest`, whole groups at a time; all of them where
    that is what it takes (the caller says what that leaves)."""
    if count >= len(rest):
        return [c for c, _ in rest]
    try:
        return holdout_classes([c for c, _ in rest], [g for _, g in rest], count=count, seed=seed)
    except UserError:  # whole groups took every class left: its message would name crossval.py's option
        return [c for c, _ in rest]


def split_classes(classes, groups, *, val, test=0, seed=0, train_only=()):
    """{'train', 'val', 'test'}: disjoint sorted class lists, whole groups at a time; val and test
    are about `val` and `test` classes (each a count, or a fraction below 1 of the classes that can
    be drawn), drawn by `seed` (test from what val left). The groups of the classes `train_only`
    (those with a single image) stay in train."""
    pinned = {g for c, g in zip(classes, groups) if c in set(train_only)}
    rest = [(c, g) for c, g in zip(classes, groups) if g not in pinned]
    drawable = len(rest)
    counts = {"val": class_count(val, drawable), "test": class_count(test, drawable)}
    among = " with two images or more" if pinned else ""
    if counts["val"] < 2:
        raise UserError(f"--val-classes {val} gives {counts['val']} of {drawable} classes{among}; validation needs at "
                        f"least 2")
    if test and counts["test"] < 2:  # a fraction that rounds to no class is no test split, not 'none asked for'
        raise UserError(f"--test-classes {test} gives {counts['test']} of {drawable} classes{among}; a test split needs "
                        f"at least 2 (0: no test split)")
    taken = {"val": [], "test": []}
    for name, offset in (("val", 0), ("test", 1)):
        if counts[name]:
            taken[name] = _draw(rest, counts[name], seed + offset)
            rest = [(c, g) for c, g in rest if c not in set(taken[name])]
    result = {"train": sorted(c for c in classes if c not in set(taken["val"] + taken["test"])), **taken}
    sizes = {"train": len(rest), "val": len(taken["val"]), "test": len(taken["test"])}
    for name in ("train", "val") + (("test",) if counts["test"] else ()):
        if sizes[name] < 2:
            raise UserError(f"the {name} split would have {sizes[name]} class(es) of {drawable}{among}; a pair "
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
