"""Split one folder of classes into train/ and val/ (and test/) whose classes do not overlap,
as links to the class folders: nothing is copied or moved.

Example (a fifth of the classes for validation, seeded):
    python split.py photos -o data --val-classes 0.2 --seed 0
    python train.py --train-path data/train --val-path data/val -o runs/mine

Writes OUT/train/ClassName and OUT/val/ClassName (links to photos/ClassName), OUT/test/ with
--test-classes, and OUT/split.json (the classes of each split, the source and the seed).
"""

from siamese.errors import UserError, cli
from siamese.options import add_out_option, script_parser


def get_args_parser():
    p = script_parser(__doc__)
    p.add_argument("folder", type=str, help="the folder of classes: FOLDER/ClassName/image")
    add_out_option(p, "new folder for train/, val/ (and test/)", required=True)
    p.add_argument("--val-classes", default=0.2, type=float,
                   help="classes for validation: a number (e.g. 8) or a fraction below 1 (default: 0.2)")
    p.add_argument("--test-classes", default=0.0, type=float,
                   help="classes for a final test, kept out of every choice: a number or a fraction (default: 0)")
    p.add_argument("--seed", default=0, type=int, help="seed of the draw of classes (default: 0)")
    p.add_argument("--group-regex", default=None, type=str,
                   help="keep the classes of one group in one split: the group is the regex's first capture group "
                        "in the class name (e.g. '(.+)_character[0-9]+$' for alphabets) (default: each class alone)")
    return p


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    from siamese.folds import class_groups
    from siamese.images import scan_folder
    from siamese.split import class_count, split_classes, write_split

    folder = scan_folder(args.folder, what="folder to split")
    total = len(folder.classes)
    val = class_count(args.val_classes, total, "--val-classes")
    test = class_count(args.test_classes, total, "--test-classes")
    if val < 2:
        raise UserError(f"--val-classes {args.val_classes} gives {val} of {total} classes; validation needs at least 2")
    groups = class_groups(folder.classes, regex=args.group_regex)
    split = split_classes(folder.classes, groups, val=val, test=test, seed=args.seed)
    images = write_split(folder, split, args.out_path, seed=args.seed)
    for name, classes in split.items():
        if classes:
            print(f"{name}: {len(classes)} classes, {images[name]} images -> {args.out_path}/{name}/")
    print(f"wrote {args.out_path}/split.json; nothing was copied or moved")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
