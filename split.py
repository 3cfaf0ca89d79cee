"""Split one folder of classes into train/ and val/ (and test/) whose classes do not overlap,
as links to the class folders: nothing is copied or moved.

Example (a fifth of the classes for validation, seeded):
    python split.py photos -o data --val-classes 0.2 --seed 0
    python train.py --train-path data/train --val-path data/val -o runs/mine

Writes OUT/train/ClassName and OUT/val/ClassName (links to photos/ClassName), OUT/test/ with
--test-classes, and OUT/split.json (the classes of each split, the source and the seed).
"""

from siamese.errors import UserError, cli
from siamese.options import SEED, add_out_option, classes_or_fraction, script_parser


def get_args_parser():
    p = script_parser(__doc__)
    p.add_argument("folder", type=str, help="the folder of classes: FOLDER/ClassName/image")
    add_out_option(p, "new folder for train/, val/ (and test/)", required=True)
    p.add_argument("--val-classes", default=0.2, type=classes_or_fraction,
                   help="classes for validation: a number (e.g. 8) or a fraction below 1 of the classes with two "
                        "images or more (default: 0.2)")
    p.add_argument("--test-classes", default=0.0, type=classes_or_fraction,
                   help="classes for a final test, kept out of every choice: a number or a fraction (default: 0)")
    p.add_argument("--seed", default=0, type=SEED, help="seed of the draw of classes (default: 0)")
    p.add_argument("--group-regex", default=None, type=str,
                   help="keep the classes of one group in one split: the group is the regex's first capture group "
                        "in the class name (e.g. '(.+)_character[0-9]+$' for alphabets) (default: each class alone)")
    return p


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    from siamese.folds import class_groups
    from siamese.images import scan_folder
    from siamese.split import single_image_classes, single_image_note, split_classes, write_split

    folder = scan_folder(args.folder, what="folder to split")
    groups = class_groups(folder.classes, regex=args.group_regex)
    singles = single_image_classes(folder)
    split = split_classes(folder.classes, groups, val=args.val_classes, test=args.test_classes, seed=args.seed,
                          train_only=singles)
    images = write_split(folder, split, args.out_path, seed=args.seed)
    if singles:
        print(single_image_note(singles, grouped=args.group_regex is not None))
    for name, classes in split.items():
        if classes:
            print(f"{name}: {len(classes)} classes, {images[name]} images -> {args.out_path}/{name}/")
    print(f"wrote {args.out_path}/split.json; nothing was copied or moved")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
