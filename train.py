"""Train a Siamese network on a folder-per-class image tree.

Example (one CPU or GPU):
    python train.py --train_path data/train --val_path data/val -o runs/exp1 -b resnet18 -e 20

Many GPUs or machines (one process per GPU):
    torchrun --nproc_per_node 4 train.py --train_path data/train --val_path data/val -o runs/exp1

Without --val_path (the final model, once cross-validation has chosen the settings and the
number of epochs; see crossval.py):
    python train.py --train_path data/train data/val -o runs/final -b resnet18 -e 20

Writes best.pth (with validation), last.pth (for --resume; the final model without validation),
epoch_N.pth, args.json, metrics.csv and tensorboard/ (view with: tensorboard --logdir runs/exp1)
into the out path.
"""

import argparse

from siamese.data import AUGMENTATIONS
from siamese.errors import cli
from siamese.model import DEFAULT_FEATURES, FEATURE_MODES
from siamese.training import LR_SCHEDULES, PAIRINGS, fit


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train_path", "--train-path", required=True, nargs="+", type=str,
                   help="training folder: ROOT/ClassName/image; several folders train on their classes together")
    p.add_argument("--val_path", "--val-path", default=None, type=str,
                   help="validation folder in the same layout (classes not seen in training): picks best.pth and "
                        "calibrates the threshold; without it no epoch is picked and last.pth is the final model")
    p.add_argument("-o", "--out_path", "--out-path", required=True, type=str, help="folder for checkpoints and logs")
    p.add_argument("--resume", default=None, type=str, help="continue from this last.pth")
    p.add_argument("--val-pairs-per-image", default=1, type=int, help="validation pairs per image (fixed by --seed)")
    add_training_options(p)
    return p


def add_training_options(p):
    """The model and optimisation options, shared with crossval.py."""
    p.add_argument("-b", "--backbone", default="resnet18", type=str, help="any torchvision classification model name")
    p.add_argument("--weights", default="imagenet", type=str,
                   help="backbone weights: 'imagenet' (download), 'none' (random init) or a path to a torchvision state dict")
    p.add_argument("--features", default=DEFAULT_FEATURES, choices=FEATURE_MODES,
                   help="'pooled': the backbone's features with its classifier removed; "
                        "'logits': the ImageNet classifier's outputs (the original toolkit's behaviour)")
    p.add_argument("--image-size", default=224, type=int, help="images are resized to this square size")
    p.add_argument("--dropout", default=0.5, type=float, help="dropout of the head's three Dropout layers")
    p.add_argument("--normalize-features", action="store_true",
                   help="scale each image's feature vector to unit length before the product (the head then sees "
                        "the cosine similarity's terms); stored in the model")
    p.add_argument("-e", "--epochs", default=20, type=int, help="number of epochs")
    p.add_argument("--batch-size", default=32, type=int,
                   help="pairs per batch, or images per batch with --pairing in-batch (per process under torchrun)")
    p.add_argument("-lr", "--learning_rate", "--learning-rate", default=1e-4, type=float, help="Adam learning rate")
    p.add_argument("--weight-decay", default=0.0, type=float, help="Adam weight decay")
    p.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES, help="learning rate schedule over the epochs")
    p.add_argument("-s", "--save_after", "--save-after", default=25, type=int,
                   help="also keep epoch_N.pth every this many epochs (0: never)")
    p.add_argument("--workers", default=2, type=int, help="data loading worker processes (per process)")
    p.add_argument("--device", default="auto", type=str, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 autocast on CUDA, bfloat16 on CPUs (faster on CPUs with AVX512-BF16 or AMX)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (often faster on GPUs)")
    p.add_argument("--seed", default=0, type=int, help="seed for initialisation, pairs, augmentation and shuffling")
    p.add_argument("--augment", default="full", choices=AUGMENTATIONS,
                   help="training augmentation: 'full' random affine (20 deg, translate 0.2, scale 0.8-1.2, shear) and "
                        "horizontal flip; 'affine' without the flip (for characters, digits); 'none'")
    p.add_argument("--no-augment", dest="augment", action="store_const", const="none", help="same as --augment none")
    p.add_argument("--jitter", default=0.0, type=float,
                   help="random brightness and contrast: each scaled by a factor from [1 - J, 1 + J] per training image "
                        "(robustness to lighting and exposure; 0: off)")
    p.add_argument("--erase", default=0.0, type=float,
                   help="probability of random erasing: one random rectangle of a training image set to the mean colour "
                        "(robustness to occlusion; 0: off)")
    p.add_argument("--pairing", default="sampled", choices=PAIRINGS,
                   help="'sampled': pairs drawn by the 0.5 same/different rule, two images per pair; 'in-batch': "
                        "batches of --images-per-class images from each of several classes, every pair within a batch "
                        "scored, same and different pairs weighted equally (many more pairs per image computed)")
    p.add_argument("--images-per-class", default=4, type=int, help="images of each class in a batch with --pairing in-batch")
    p.add_argument("--class-loss", default=0.0, type=float,
                   help="with --pairing in-batch: also train a linear classifier over the training classes on the "
                        "backbone features and add its cross-entropy, times this weight, to the loss (e.g. 1.0; "
                        "features that generalise better to unseen classes; the classifier is not deployed); 0: off")
    p.add_argument("--ema", default=0.0, type=float,
                   help="keep an exponential moving average of the weights with this decay per step (e.g. 0.999) and "
                        "validate, save and deploy it instead of the last step's weights; 0: off")
    p.add_argument("--pairs-per-image", default=1, type=int,
                   help="training pairs per image per epoch (with --pairing in-batch: times each image is used per epoch)")
    p.add_argument("--rotations", default=1, type=int, choices=(1, 2, 4),
                   help="4: each class turned by 90, 180, 270 degrees is a class of its own (for rotation-variant "
                        "images such as characters); 1: off")
    p.add_argument("--mirror-classes", action="store_true",
                   help="each class mirrored left-right is a class of its own (for characters; needs --augment "
                        "affine or none, since a flip would mix a class with its mirror)")
    p.add_argument("--eval-batch-size", default=None, type=int,
                   help="images per batch when validating (default: 64 on a GPU, 8 at 224 px on a CPU; see eval.py)")
    return p


TRAINING_OPTIONS = ("backbone", "weights", "features", "image_size", "dropout", "epochs", "batch_size", "learning_rate",
                    "weight_decay", "lr_schedule", "save_after", "workers", "device", "amp", "channels_last", "seed",
                    "augment", "jitter", "erase", "pairs_per_image", "rotations", "mirror_classes", "pairing",
                    "images_per_class", "ema", "class_loss", "eval_batch_size", "normalize_features")


def fit_options(args):
    """fit()'s keyword arguments from the options add_training_options() defines."""
    return {name: getattr(args, name) for name in TRAINING_OPTIONS}


def training_folders(paths):
    """Several training folders as one (train/ and val/ together for the final model)."""
    from siamese.images import merge_folders, scan_folder

    return merge_folders([scan_folder(path, what="training folder") for path in paths])


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)

    train_path = args.train_path[0] if len(args.train_path) == 1 else training_folders(args.train_path)
    best = fit(train_path=train_path, val_path=args.val_path, out_path=args.out_path, resume=args.resume,
               val_pairs_per_image=args.val_pairs_per_image, run_args=vars(args), **fit_options(args))
    if best.get("epoch") is not None:
        print(f"best validation AUC {best['auc']:.4f} (EER {best['eer']:.2%}) at epoch {best['epoch']}; "
              f"checkpoints in {args.out_path}")
    elif args.val_path is None:
        print(f"trained {args.epochs} epochs without validation; the final model is {args.out_path}/last.pth")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
