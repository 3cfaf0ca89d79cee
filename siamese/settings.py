"""The settings of a training run (TrainingSettings) and of an evaluation (EvaluationSettings),
each in one typed object: each field is a command-line option (of train.py and crossval.py; of
eval.py and eval_tensorrt.py), with its default and its help, and every check of the values sits
in one place. The package never sees the command line's namespace; the scripts build the
settings from it in one call, and args.json records a training's for re-running it with --config.
"""

import argparse
import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field

from .errors import UserError, check_workers, default_workers
from .options import (BATCH, CHANNELS_LAST_HELP, EPOCHS, FAR, IMAGE_SIZE, MAX_BATCH, MAX_CLASSES, MAX_PAIRS_PER_IMAGE,
                      OFF_OR_FRACTION, PICTURES, PROBABILITY, SEED, TEXT_TYPES, TRIALS, WORKERS, Number, bounds_of, whole)

# The choices of some options, here rather than beside the code that reads them (data.py,
# model.py), so that the scripts parse their options without importing PyTorch: a Ctrl-C in
# those first seconds is then the one-line message, not a traceback.
AUGMENTATIONS = ("full", "affine", "flip", "none")
FEATURE_MODES = ("pooled", "logits")
DEFAULT_FEATURES = "pooled"
LR_SCHEDULES = ("constant", "cosine", "step")
PAIRINGS = ("sampled", "in-batch")


def option(default, help, *flags, choices=None, required=False, number=None):
    """A settings field and the command-line option it is: flags (the first long one names the
    field's option in messages), help, choices, whether the command line must give it, and for a
    number its options.Number (its type on the command line, and its one check)."""
    return field(default=default, metadata={"help": help, "flags": flags, "choices": choices, "required": required,
                                            "number": number})


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    # the model
    backbone: str = option("resnet18", "any torchvision classification model name", "-b", "--backbone")
    weights: str = option("imagenet", "backbone weights: 'imagenet' (download), 'none' (random init) or a path to a "
                                      "torchvision state dict")
    features: str = option(DEFAULT_FEATURES, "'pooled': the backbone's features with its classifier removed; 'logits': "
                                             "the ImageNet classifier's outputs (the original toolkit's behaviour)",
                           choices=FEATURE_MODES)
    image_size: int = option(224, "images are resized to this square size", number=IMAGE_SIZE)
    dropout: float = option(0.5, "dropout of the head's three Dropout layers",
                            number=Number(float, 0, 1, below=True, noun="a probability"))
    normalize_features: bool = option(False, "scale each image's feature vector to unit length before the product (the "
                                             "head then sees the cosine similarity's terms); stored in the model")
    flip_average: bool = option(False, "score each pair also with both images mirrored left-right and average the two "
                                       "similarities (test-time augmentation: both images are mirrored, so a pair of one "
                                       "class stays one; it helped faces and characters alike, see the README's "
                                       "Recipes); training is unchanged; stored in the model")
    shift_average: bool = option(False, "embed each image also shifted by one pixel up, down, left and right and average "
                                        "the five feature vectors (test-time augmentation for small images: 5x the "
                                        "backbone's work when scoring); training is unchanged; stored in the model")
    # optimisation
    epochs: int = option(20, "number of epochs", "-e", "--epochs", number=EPOCHS)
    batch_size: int = option(32, "pairs per batch, or images per batch with --pairing in-batch (per process under "
                                 "torchrun)", number=whole(2, MAX_BATCH))
    learning_rate: float = option(1e-4, "Adam learning rate", "--learning-rate", "-lr", "--learning_rate",
                                  number=Number(float, 0, 10, above=True))
    weight_decay: float = option(0.0, "Adam weight decay", number=Number(float, 0, 10))
    lr_schedule: str = option("constant", "learning rate schedule over the epochs", choices=LR_SCHEDULES)
    ema: float = option(0.0, "keep an exponential moving average of the weights with this decay per step (e.g. 0.999) "
                             "and validate, save and deploy it instead of the last step's weights; 0: off",
                        number=OFF_OR_FRACTION)
    seed: int = option(0, "seed for initialisation, pairs, augmentation and shuffling", number=SEED)
    # pairs and augmentation
    pairing: str = option("sampled", "'sampled': pairs drawn by the 0.5 same/different rule, two images per pair; "
                                     "'in-batch': batches of --images-per-class images from each of several classes, "
                                     "every pair within a batch scored, same and different pairs weighted equally "
                                     "(many more pairs per image computed)", choices=PAIRINGS)
    images_per_class: int = option(4, "images of each class in a batch with --pairing in-batch",
                                   number=whole(2, MAX_BATCH // 2))
    pairs_per_image: int = option(1, "training pairs per image per epoch (with --pairing in-batch: times each image is "
                                     "used per epoch)", number=whole(1, MAX_PAIRS_PER_IMAGE))
    class_loss: float = option(0.0, "with --pairing in-batch: also train a linear classifier over the training classes "
                                    "on the backbone features and add its cross-entropy, times this weight, to the loss "
                                    "(e.g. 1.0; features that generalise better to unseen classes; the classifier is "
                                    "not deployed); 0: off", number=Number(float, 0, 1000, off=0))
    class_scale: float = option(0.0, "with --class-loss: 0 trains a linear classifier; S > 0 a cosine classifier, "
                                     "whose logits are S times the cosine between an image's features and each class's "
                                     "weights (it trains the features' directions, what --normalize-features compares; "
                                     "e.g. 16)", number=Number(float, 0, 1000))
    class_margin: float = option(0.0, "with --class-scale: take this from the cosine of each image's own class while "
                                      "training (an additive margin, as CosFace: tighter classes; e.g. 0.1); 0: off",
                                 number=OFF_OR_FRACTION)
    augment: str = option("full", "training augmentation: 'full' random affine (20 deg, translate 0.2, scale 0.8-1.2, "
                                  "shear) and horizontal flip; 'affine' without the flip (for characters, digits); 'flip' the "
                                  "flip alone (aligned faces); 'none'",
                          choices=AUGMENTATIONS)
    jitter: float = option(0.0, "random brightness and contrast: each scaled by a factor from [1 - J, 1 + J] per "
                                "training image (robustness to lighting and exposure; 0: off)",
                          number=Number(float, 0, 1, below=True, off=0, noun="a strength"))
    erase: float = option(0.0, "probability of random erasing: one random rectangle of a training image set to the "
                               "mean colour (robustness to occlusion; 0: off)",
                         number=Number(float, 0, 1, noun="a probability"))
    rotations: int = option(1, "4: each class turned by 90, 180, 270 degrees is a class of its own (for "
                               "rotation-variant images such as characters); 1: off", choices=(1, 2, 4),
                           number=whole(1, 4))
    mirror_classes: bool = option(False, "each class mirrored left-right is a class of its own (for characters; needs "
                                         "--augment affine or none, since a flip would mix a class with its mirror)")
    # validation
    val_pairs_per_image: int = option(1, "validation pairs per image (fixed by --seed)",
                                      number=whole(1, MAX_PAIRS_PER_IMAGE))
    eval_batch_size: int | None = option(None, "images per batch when validating (default: 64 on a GPU, 8 at 224 px "
                                               "on a CPU; see eval.py)", number=BATCH)
    threshold_at_far: float = option(0.0, "with --val-path: store with the model the threshold at which this fraction "
                                          "of the validation's different-class pairs is called 'same' (a false accept "
                                          "rate, e.g. 0.01), instead of the best-accuracy threshold; 0: off (the "
                                          "best-accuracy threshold), as in eval.py and crossval.py", number=FAR)
    threshold: float | None = option(None, "store this threshold with the model: a pair is 'same' at or above it (e.g. "
                                           "one crossval.py --threshold-at-far found, for a final model trained without "
                                           "--val-path); default: calibrated on --val-path, else none (0.5 is used)",
                                     number=PROBABILITY)
    # where and how it runs (no effect on the result)
    save_after: int = option(25, "also keep epoch_N.pth every this many epochs (0: never)",
                             "-s", "--save-after", "--save_after", number=whole(0, EPOCHS.high, off=0))
    workers: int | None = option(None, "data loading worker processes (per process; default: 2, or the CPU cores the "
                                       "process may use if fewer)", number=WORKERS)
    cache_mb: int = option(4096, "keep the training images decoded at --image-size in memory shared by the loader "
                                 "workers, when they fit in this many MB (per process under torchrun): each file is "
                                 "decoded once; larger datasets stream from disk; 0: never cache",
                          number=whole(0, 2**24))
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    amp: bool = option(False, "mixed precision: bfloat16 autocast on GPUs of compute capability 8.0 (Ampere) and "
                              "newer and on CPUs (faster on CPUs with AVX512-BF16 or AMX), float16 with a gradient "
                              "scaler on older GPUs")
    channels_last: bool | None = option(None, CHANNELS_LAST_HELP)
    tf32: bool = option(True, "on GPUs of compute capability 8.0 and newer, float32 convolutions and matrix products "
                              "use TF32 tensor cores (--no-tf32: full float32 products)")
    compile: bool = option(False, "torch.compile the model for training and validation (a GPU needs Triton, a CPU a "
                                  "C++ compiler; the first steps wait for the compiler, printed)")

    def __post_init__(self):
        _check_types(self)
        self.validate()

    def validate(self):
        """Every check of the values alone, each one line naming the option (what needs the data or a
        resumed checkpoint is checked where those are read)."""
        _check_numbers(self)
        _check_workers(self)
        for name in ("features", "lr_schedule", "pairing", "augment", "rotations"):
            choices = _FIELDS[name].metadata["choices"]
            if getattr(self, name) not in choices:
                raise UserError(f"{flag(name)} must be one of {', '.join(map(str, choices))}, "
                                f"not '{getattr(self, name)}'")
        if self.pairing == "in-batch" and self.batch_size < 2 * self.images_per_class:
            raise UserError(f"--pairing in-batch needs --images-per-class of at least 2 and --batch-size (images) of at "
                            f"least two classes' worth (2 x {self.images_per_class}); got {self.images_per_class} and "
                            f"{self.batch_size}")
        if self.class_loss > 0 and self.pairing != "in-batch":
            raise UserError(f"--class-loss must be 0 (off) or a positive weight, with --pairing in-batch (it needs each "
                            f"image's class); got {self.class_loss} with --pairing {self.pairing}")
        if self.class_scale > 0 and self.class_loss == 0:
            raise UserError(f"--class-scale must be 0 (a linear classifier) or a positive scale with --class-loss; got "
                            f"{self.class_scale} with --class-loss {self.class_loss}")
        if self.class_margin > 0 and self.class_scale == 0:
            raise UserError(f"--class-margin must be 0 (off) or a cosine margin below 1, with --class-scale; got "
                            f"{self.class_margin} with --class-scale {self.class_scale}")
        if self.threshold is not None and self.threshold_at_far:
            raise UserError("give --threshold (a threshold to store) or --threshold-at-far (one to calibrate on "
                            "--val-path), not both")
        if self.mirror_classes and self.augment in ("full", "flip"):
            raise UserError(f"--mirror-classes needs --augment affine (or none): the flip of --augment {self.augment} "
                            f"would mix each class with its mirror class")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_namespace(cls, args):
        """The settings from parsed options (those add_options() defined; others are ignored)."""
        return _from_namespace(cls, args)


@dataclass(frozen=True, kw_only=True)
class EvaluationSettings:
    """What eval.py and eval_tensorrt.py share: which pairs, which threshold, what is written.
    The two scripts differ only in how they build the scorer."""

    val_path: str | None = option(None, "folder: ROOT/ClassName/image", "-v", "--val-path", "--val_path",
                                  required=True)
    out_path: str | None = option(None, "folder for the results", "-o", "--out", "--out-path", "--out_path",
                                  required=True)
    seed: int = option(1, "the evaluation pairs are a function of the files and this seed", number=SEED)
    pairs_file: str | None = option(None, "score this pair list instead (CSV 'left,right,same', paths relative to the "
                                          "folder or its parent)", "--pairs")
    pairs_per_image: int | None = option(None, "pairs drawn per image, seeded, each pair once (without --pairs; "
                                               "default: every pair when the folder makes at most 10,000, else 10,000 "
                                               "distinct pairs drawn, half of them same-class or every same-class "
                                               "pair when fewer)", number=whole(1, MAX_PAIRS_PER_IMAGE))
    batch_size: int | None = option(None, "images per batch when embedding (default: 64 on a GPU; on a CPU about "
                                          "320,000 pixels, so 8 at 224 px and 64 at 64 px, which ran fastest)",
                                    number=BATCH)
    workers: int | None = option(None, "threads writing pair pictures, and image loading processes on a GPU (on a "
                                       "CPU, images load in the main process: loader processes would only compete "
                                       "with the backbone; default: 2, or the CPU cores the process may use if fewer)",
                                 number=WORKERS)
    threshold: float | None = option(None, "similarity at or above which a pair is called 'same' (default: the "
                                           "threshold stored with the model, else 0.5)", number=PROBABILITY)
    threshold_at_far: float | None = option(None, "set the threshold on these pairs instead: the lowest at which at "
                                                  "most this fraction of the different-class pairs is called 'same' (a "
                                                  "false accept rate, e.g. 0.01); reported with the true accept rate "
                                                  "it gives; 0: off, as if not given (as in train.py)", number=FAR)
    max_pictures: int | None = option(200, "write at most this many pair pictures: of each kind (same, different) the "
                                           "wrong ones first, then those nearest the threshold", number=PICTURES)
    n_way: int = option(0, "also run N-way one-shot trials (0: off)", number=whole(0, MAX_CLASSES, off=0))
    trials: int = option(400, "number of one-shot trials", number=TRIALS)
    within_group: bool = option(False, "draw the N classes of each one-shot trial from one group (--group-regex or "
                                       "--group-csv), e.g. one alphabet (Lake et al. 2015)")
    group_regex: str | None = option(None, "the group of a class: the first capture group (or match) in its name, "
                                           "e.g. '(.+)_character[0-9]+$' for Omniglot's alphabets")
    group_csv: str | None = option(None, "CSV 'class,group' naming the group of every class")
    baselines: bool = option(False, "also score the same pairs and trials with no-learning baselines (raw-pixel cosine "
                                    "similarity, LBP histograms) and report them beside the model")
    retrieval: bool = option(False, "also rank, for every image, all the other images by similarity (leave-one-out "
                                    "retrieval): CMC at ranks 1, 5 and 10, mAP, rank-1 by the features' cosine, and "
                                    "open-set identification with half the classes (seeded) left out of the gallery; "
                                    "writes cmc.png")

    def __post_init__(self):
        _check_types(self)
        self.validate()

    def validate(self):
        """Every check of the values alone, each one line naming the option."""
        _check_numbers(self)
        _check_workers(self)
        if self.threshold_at_far == 0:  # off, as in train.py and crossval.py
            object.__setattr__(self, "threshold_at_far", None)
        if self.threshold_at_far is not None and self.threshold is not None:
            raise UserError("give --threshold or --threshold-at-far, not both")
        if self.within_group and not (self.n_way and (self.group_regex or self.group_csv)):
            raise UserError("--within-group needs --n-way and the groups (--group-regex or --group-csv)")

    @classmethod
    def from_namespace(cls, args):
        return _from_namespace(cls, args)


ONE_SHOT_OPTIONS = ("n_way", "trials", "within_group", "group_regex", "group_csv")  # crossval.py takes these too


@functools.cache
def _fields(cls):
    return {f.name: f for f in dataclasses.fields(cls)}


@functools.cache
def _hints(cls):
    return typing.get_type_hints(cls)


def _from_namespace(cls, args):
    return cls(**{name: getattr(args, name) for name in _fields(cls) if hasattr(args, name)})


_FIELDS = _fields(TrainingSettings)


def flag(name, cls=TrainingSettings):
    """The option's name for messages: its first long flag."""
    flags = _fields(cls)[name].metadata["flags"]
    return next((f for f in flags if f.startswith("--")), "--" + name.replace("_", "-"))


def _type_name(hint):
    return " or ".join("none" if t is type(None) else t.__name__ for t in typing.get_args(hint)) or hint.__name__


def _fits(value, hint):
    if isinstance(hint, types.UnionType):
        return any(_fits(value, t) for t in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:  # JSON writes 1.0 as 1.0 but users write 1
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_types(settings):
    """Settings come from JSON files too: a string where a number belongs is one line, not a crash later."""
    for name, hint in _hints(type(settings)).items():
        value = getattr(settings, name)
        if not _fits(value, hint):
            raise UserError(f"{flag(name, type(settings))} must be {_type_name(hint)}, not {json.dumps(value)}")
        if hint is float and isinstance(value, int):
            object.__setattr__(settings, name, float(value))


def _check_workers(settings):
    """--workers left out: 2, or the CPU cores this process may use if fewer (a default never
    refuses to run where the command was started); a number given: at most those cores."""
    if settings.workers is None:
        object.__setattr__(settings, "workers", default_workers())
    check_workers(settings.workers)


def _check_numbers(settings):
    """Each number against its options.Number: the command line's type checked it already; a
    value from a file (args.json) or from code is held to the same rule here."""
    for name, f in _fields(type(settings)).items():
        if f.metadata["number"] is not None:
            f.metadata["number"].check(getattr(settings, name), flag(name, type(settings)))


def add_options(parser, skip=(), *, settings=TrainingSettings, only=None):
    """The settings' command-line options, from the fields (one place for each option's default and
    help): all of them but `skip`, or `only` those named."""
    for name, f in _fields(settings).items():
        if name in skip or (only is not None and name not in only):
            continue
        hint = _hints(settings)[name]
        flags = f.metadata["flags"] or ("--" + name.replace("_", "-"),)
        kwargs = dict(default=f.default, help=f.metadata["help"], dest=name)
        if f.metadata["required"]:
            kwargs["required"] = True
        if hint is bool or hint == bool | None:  # None: the default chooses
            kwargs["action"] = argparse.BooleanOptionalAction  # --amp / --no-amp: a recorded run's flag can be undone
        else:
            kwargs["type"] = f.metadata["number"] or (  # a number's own type; else X | None: X
                typing.get_args(hint)[0] if isinstance(hint, types.UnionType) else hint)
            if f.metadata["choices"]:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(*flags, **kwargs)
    if settings is TrainingSettings and "augment" not in skip:
        parser.add_argument("--no-augment", dest="augment", action="store_const", const="none",
                            help="same as --augment none")
    return parser


# What args.json records beside the settings: the data and where the run went and ran. --config
# takes the data from it; the rest describes that run only.
RECORDED_DATA = ("train_path", "val_path")
RECORDED_ONLY = ("out_path", "resume", "config", "earlier_train_path", "ran_on", "world_size", "run_id", "fold", "repeat", "outer", "held_out")


class _Written(str):
    """A number of a JSON file as written (99999999999999999999, 1e-400, NaN): the option's own
    type reads it, as it reads the command line's words; float() would first turn 1e-400 into 0."""


def _shown(value):
    """A recorded value as the file writes it."""
    if isinstance(value, _Written):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_shown, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_shown(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _recorded_value(action, value, where):
    """A recorded value through its option's own type and choices, the objects argparse reads
    the command line with (null: not given, where the option's default is that); `where` names
    the file and the key in a refusal."""
    if value is None and action.default is None:
        return None
    if action.nargs == 0:  # a switch: --amp / --no-amp
        if type(value) is bool:
            return value
        raise UserError(f"{where} must be true or false, not {_shown(value)}")
    several = action.nargs in ("+", "*")
    items = value if several and isinstance(value, list) and value else [value]
    number = action.type not in TEXT_TYPES
    what = f"a number ({bounds_of(action.type)})" if number else "a string"
    read = []
    for item in items:
        if not isinstance(item, str) or isinstance(item, _Written) != number:
            raise UserError(f"{where} must be {what}{' or a list of them' if several else ''}, not {_shown(value)}")
        try:
            item = action.type(str(item)) if action.type not in (None, str) else str(item)
        except argparse.ArgumentTypeError as error:
            raise UserError(f"{where} {error}") from None
        if action.choices is not None and item not in action.choices:
            raise UserError(f"{where} must be one of {', '.join(map(str, action.choices))}, not {_shown(value)}")
        read.append(item)
    return read if several else read[0]


def read_run_record(path, parser):
    """The settings and data of a recorded run (args.json) as option defaults for --config, each
    read by `parser`'s own option (type, range, choices: as if given on the command line) and
    refused naming the file and the key; unknown keys are refused, naming them, so a typo never
    silently falls back to a default."""
    try:
        with open(path) as f:
            record = json.load(f, parse_int=_Written, parse_float=_Written, parse_constant=_Written)
    except FileNotFoundError:
        raise UserError(f"--config '{path}' does not exist; give the args.json of an earlier training run") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"--config '{path}' is not a readable JSON file ({error}); give the args.json of an earlier "
                        f"training run") from None
    if not isinstance(record, dict):
        raise UserError(f"--config '{path}' does not hold a training run's settings (a JSON object)")
    options = {}
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            options.setdefault(action.dest, action)  # --augment before --no-augment
    known = (set(_FIELDS) | set(RECORDED_DATA)) & set(options)
    unknown = sorted(set(record) - known - set(RECORDED_ONLY))
    if unknown:
        raise UserError(f"--config '{path}' has unknown setting(s) {', '.join(unknown)}; correct or remove them "
                        f"(python train.py --help lists the settings)")
    return {name: _recorded_value(options[name], value, f"--config '{path}': {name}")
            for name, value in record.items() if name in known}
