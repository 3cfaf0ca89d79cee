"""Image files: the folder scan, loading any image mode, and the one preprocessing definition.

No torch here: the deployment runtime uses the same code, so a deployed model sees exactly
the arrays the trained model saw.
"""

import functools
import io
import math
import os
import stat
import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .content import content_keys
from .errors import UserError

# On a CPU, the backbone ran fastest with batches of about this many pixels, whose activations
# stay in the caches: resnet18 at 224 px gave 88 images/s at batch 8 against 59 at batch 64; the
# best batch was 8 at 224 px, 16 at 128, 64 at 64 and 256 at 32 (2 cores; README, Speed).
CPU_BATCH_PIXELS = 320_000


def cpu_images_per_batch(image_size):
    """The power of two nearest to CPU_BATCH_PIXELS / image_size**2 (8 at 224 px, 64 at 64 px)."""
    return 2 ** round(math.log2(max(1.0, CPU_BATCH_PIXELS / image_size ** 2)))

ORIENTATION = 0x0112  # the EXIF tag
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Image.init()
# Every extension Pillow can open, lower case with the dot (".png", ".jpg", ".tif", ...).
IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.EXTENSION.items() if fmt in Image.OPEN)


def is_image_file(name):
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class ImageFolder:
    """A scanned ROOT/ClassName/image tree: sorted classes and (path, class index) samples, and
    each image's content key (content.content_keys; None where the folder was not hashed)."""

    root: str
    classes: list
    paths: list
    labels: list
    keys: list = None
    parts: tuple = ()  # the folders merged into this one (merge_folders); root is their common parent

    @property
    def folders(self):
        """The folders the images were read from: the parts merged, or the root."""
        return list(self.parts) or [self.root]

    def __len__(self):
        return len(self.paths)

    def image_keys(self):
        """The content keys of the images, in order: the scan's, so no image is hashed twice."""
        return list(self.keys) if self.keys is not None else content_keys(self.paths)

    def keys_for(self, paths, known=None):
        """The content keys of `paths`: the scan's for its images (by absolute path), any other
        file hashed once and added to `known` ({absolute path: key}, made from the scan if None)."""
        known = dict(zip(map(os.path.abspath, self.paths), self.image_keys())) if known is None else known
        todo = sorted({os.path.abspath(p) for p in paths} - known.keys())
        known.update(zip(todo, content_keys(todo)))
        return [known[os.path.abspath(p)] for p in paths]

    def images_by_class(self):
        groups = [[] for _ in self.classes]
        for index, label in enumerate(self.labels):
            groups[label].append(index)
        return groups

    def subset(self, classes):
        """The same images restricted to the named classes (in this folder's class order)."""
        keep = set(classes)
        unknown = keep - set(self.classes)
        if unknown:
            raise ValueError(f"classes not in the folder: {sorted(unknown)}")
        names = [name for name in self.classes if name in keep]
        new_label = {self.classes.index(name): i for i, name in enumerate(names)}
        kept = [i for i, label in enumerate(self.labels) if label in new_label]
        return ImageFolder(self.root, names, [self.paths[i] for i in kept], [new_label[self.labels[i]] for i in kept],
                           None if self.keys is None else [self.keys[i] for i in kept], self.parts)


def merge_folders(folders):
    """One folder of the classes of several (train/ and val/ together, for cross-validation);
    a class name found in two of them is the user's error, since the classes would merge, and so
    is an image of one folder's class whose content is an image of another's (distinct_content)."""
    if len(folders) == 1:
        return folders[0]
    seen = {}
    for folder in folders:
        for name in folder.classes:
            if name in seen:
                raise UserError(f"class '{name}' is in both '{seen[name]}' and '{folder.root}'; give folders whose "
                                f"classes differ, or rename one of them")
            seen[name] = folder.root
    classes, paths, labels, keys = [], [], [], []
    for folder in folders:
        paths += folder.paths
        labels += [label + len(classes) for label in folder.labels]
        classes += folder.classes
        keys += folder.image_keys()
    order = sorted(range(len(classes)), key=lambda c: classes[c])  # classes sorted by name, as a scan gives them
    rank = {c: i for i, c in enumerate(order)}
    samples = sorted(zip(paths, labels, keys), key=lambda s: (rank[s[1]], s[0]))
    merged = ImageFolder(os.path.commonpath([f.root for f in folders]), [classes[c] for c in order],
                         [p for p, _, _ in samples], [rank[label] for _, label, _ in samples], [k for _, _, k in samples],
                         tuple(part for f in folders for part in f.folders))
    return distinct_content(merged, where="the folders " + ", ".join(f"'{f.root}'" for f in folders))


def distinct_content(folder, *, where, shown=3):
    """`folder` with each content once per class (known by content keys): an image whose bytes are
    another image's of its class is set aside (a pair of the two would pair an image with itself),
    the first by sorted path kept, and one warning line says how many; an image whose bytes are an
    image's of another class is refused (its labels contradict each other: a pair of the two would
    be a "different" pair of one image). `where` names the folder(s) in the lines."""
    first, kept, aside, clashes = {}, [], [], []
    for index, key in enumerate(folder.keys):
        if key not in first:
            first[key] = index
            kept.append(index)
        else:
            (aside if folder.labels[first[key]] == folder.labels[index] else clashes).append((index, first[key]))
    paths = folder.paths
    if clashes:
        examples = ", ".join(f"'{paths[i]}' (as '{paths[j]}')" for i, j in clashes[:shown])
        raise UserError(f"{where}: {len(clashes)} image(s) have the content (the same bytes) of an image of another "
                        f"class, such as {examples}: one image cannot be of two classes, and its pairs would be "
                        f"scored or trained on as different; remove the copies, or merge the classes if they are one")
    if not aside:
        return folder
    examples = ", ".join(f"'{paths[i]}' (of '{paths[j]}')" for i, j in aside[:shown])
    print(f"warning: {where}: set aside {len(aside)} image(s) that are copies (the same bytes) of another image of "
          f"their class, such as {examples}; each content is read once, as its first file by sorted path",
          file=sys.stderr, flush=True)
    return ImageFolder(folder.root, folder.classes, [paths[i] for i in kept], [folder.labels[i] for i in kept],
                       [folder.keys[i] for i in kept], folder.parts)


def scan_folder(root, *, what="image folder", check_images=True, decode=False, for_pairs=True):
    """Scan ROOT/ClassName/* for images; raise UserError for anything unusable.

    A pair model needs two classes and at least one class with two images (for_pairs; a gallery
    of known entities needs only images). Each image's header is opened, so a corrupt or
    mislabelled file is named before any work starts. Each image is hashed once (its content key,
    kept in the folder): copies within a class are read once, copies across classes refused
    (distinct_content).
    """
    if not root or not os.path.exists(root):
        raise UserError(f"{what} '{root}' does not exist; give a folder laid out as ROOT/ClassName/image.png")
    if not os.path.isdir(root):
        raise UserError(f"{what} '{root}' is not a folder; give a folder laid out as ROOT/ClassName/image.png")
    classes, paths, labels = [], [], []
    seen, skipped = {os.path.realpath(root)}, []  # each real folder is read once, the root's own first
    try:
        entries = _entries(root)
    except OSError as error:
        raise UserError(f"{what} '{root}' cannot be read ({error.strerror}); check its permissions") from None
    for entry in entries:
        if not entry.is_dir():
            continue
        files = class_images(entry.path, seen=seen, skipped=skipped, above=root)
        if not files:
            continue
        paths += files
        labels += [len(classes)] * len(files)
        classes.append(entry.name)
    for line in skipped_lines(skipped, what=what):
        print(line, file=sys.stderr, flush=True)
    if not paths:
        raise UserError(f"{what} '{root}' holds no images; expected ROOT/ClassName/image.png with one folder per class")
    folder = distinct_content(ImageFolder(root, classes, paths, labels, content_keys(paths)), where=f"{what} '{root}'")
    paths = folder.paths
    if for_pairs:
        for line in layout_warnings(folder, what=what):
            print(line, file=sys.stderr, flush=True)
    if for_pairs and len(classes) < 2:
        raise UserError(f"{what} '{root}' has only one class ('{classes[0]}'); a pair model needs at least two class folders")
    if for_pairs and max(len(group) for group in folder.images_by_class()) < 2:
        raise UserError(f"no class in {what} '{root}' has two images, so no same-class pair can be made; add images")
    if decode:  # every pixel: finds truncated files too, for folders read whole anyway (validation)
        for path in paths:
            load_image(path)
    elif check_images:
        for path in paths:
            check_image(path)
    return folder


SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing", "eval"}


def layout_warnings(folder, *, what="image folder"):
    """Lines warning of a folder given one level too high: classes named like the splits of a
    dataset (ROOT holds train/ and val/), or classes whose images all sit in sub-folders (each
    sub-folder is likely a class of its own). Training on it would learn the wrong classes."""
    lines = []
    splits = [name for name in folder.classes if name.lower() in SPLIT_NAMES]
    if splits:
        lines.append(f"warning: {what} '{folder.root}' has classes named {', '.join(repr(n) for n in splits)}: is it "
                     f"the parent of the splits? Give the split itself (e.g. '{os.path.join(folder.root, splits[0])}'),"
                     f" whose sub-folders are the classes")
    parents = {os.path.dirname(path) for path in folder.paths}  # folders that hold an image themselves
    nested = [name for name in folder.classes if os.path.join(folder.root, name) not in parents]
    if nested:
        lines.append(f"warning: in {what} '{folder.root}', {len(nested)} of {len(folder.classes)} classes (such as "
                     f"'{nested[0]}') keep their images only in sub-folders; each is taken as one class. If the "
                     f"sub-folders are the classes, give '{os.path.join(folder.root, nested[0])}' instead")
    return lines


def _entries(directory):
    """The entries of a folder sorted by name, hidden ones left out."""
    with os.scandir(directory) as found:
        return sorted((e for e in found if not e.name.startswith(".")), key=lambda e: e.name)


def _holds(folder, path):
    """Whether `path` is `folder` or lies inside it (both real paths)."""
    return os.path.commonpath([folder, path]) == folder


# A link from one place of the scanned folder to another would put one image in two classes (or
# a class under a second name): what it points at is read where it lies, under its own name.
_INNER_LINK = "it is a link to '{}', inside the scanned folder itself, where it is read under its own name"


def _inner_link(path, real, tops):
    """Whether `path` is a link whose target (`real`) lies inside the scan's root (tops)."""
    return bool(tops) and os.path.islink(path) and _holds(tops[0], real)


def class_images(class_dir, *, seen=None, skipped=None, above=None):
    """The image files of one class, sorted, sub-folders included (a class may keep its images
    by session or source); hidden files and folders are left out.

    Links are followed, but each real folder is read once: one already read (`seen`, shared by
    the classes of a scan) or one holding the folder being read or `above` (the scan's root),
    such as `ln -s . loop`, is skipped, as is an image name that is not a regular file (a FIFO,
    a broken link). Each skip is a (path, reason) in `skipped`, printed on stderr when no list
    is given."""
    seen = set() if seen is None else seen
    own = skipped is None
    skipped = [] if own else skipped
    tops = (os.path.realpath(above),) if above else ()
    found, todo = [], [(class_dir, tops)]
    while todo:
        directory, holders = todo.pop()
        real = os.path.realpath(directory)
        loop = any(_holds(real, h) for h in holders)
        if loop or real in seen:
            skipped.append((directory, f"it leads to '{real}', " + ("which holds this folder (a loop)" if loop
                                                                   else "a folder already scanned")))
            continue
        if _inner_link(directory, real, tops):
            skipped.append((directory, _INNER_LINK.format(real)))
            continue
        seen.add(real)
        try:
            entries = _entries(directory)
        except OSError as error:  # a folder without read permission, say
            skipped.append((directory, f"it cannot be read ({error.strerror})"))
            continue
        for entry in reversed(entries):  # the stack then reads them in name order
            if entry.is_dir():
                todo.append((entry.path, holders + (real,)))
            elif entry.is_file():  # a regular file, or a link to one
                if not is_image_file(entry.name):
                    continue
                if entry.is_symlink() and _inner_link(entry.path, os.path.realpath(entry.path), tops):
                    skipped.append((entry.path, _INNER_LINK.format(os.path.realpath(entry.path))))
                else:
                    found.append(entry.path)
            elif is_image_file(entry.name):
                skipped.append((entry.path, "it " + (not_a_file(entry.path) or "is not a regular file")))
    if own:
        for line in skipped_lines(skipped):
            print(line, file=sys.stderr, flush=True)
    return sorted(found)


def skipped_lines(skipped, *, what="image folder", shown=10):
    """Warning lines for class_images' skips: the first `shown`, then how many more."""
    lines = [f"warning: {what}: skipped '{path}': {reason}" for path, reason in skipped[:shown]]
    if len(skipped) > shown:
        lines.append(f"warning: {what}: skipped {len(skipped) - shown} more such paths")
    return lines


def not_a_file(path):
    """Why `path` cannot be read as an image file ('does not exist', 'is a folder', 'is not a
    regular file (a FIFO)', ...), or None for a regular file or a link to one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a broken link" if os.path.islink(path) else "does not exist"
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder"
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
    return f"is not a regular file ({kind}), so not an image"


def check_image(path):
    """Open the header only (cheap): catches files that are not images at all."""
    reason = not_a_file(path)
    if reason:  # before opening: opening a FIFO would wait for a writer
        raise UserError(f"image '{path}' {reason}; give an image file")
    try:
        with Image.open(path) as img:
            img.size
    except Exception as error:  # Pillow raises many types for bad files
        raise UserError(f"cannot read image '{path}' ({error}); remove or replace the file") from None


def _to_rgb(img):
    """Convert any Pillow mode to 8-bit RGB the same way everywhere.

    16-bit and 32-bit integer grey is scaled from 0..65535, float grey from 0..1;
    transparent pixels are laid on white; palette images are expanded first.
    """
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def load_image(path, *, size_hint=None):
    """Load an image file as 8-bit RGB, naming the file in a UserError if it cannot be read.

    size_hint lets JPEG decoding skip detail that the resize would throw away anyway.
    """
    reason = not_a_file(path)
    if reason:
        raise UserError(f"image '{path}' {reason}; give an image file")
    return _decode(path, f"image '{path}'", "remove or replace the file", size_hint=size_hint)


def load_image_bytes(data, *, name="image", size_hint=None, max_pixels=None):
    """An image sent as bytes (an upload) as 8-bit RGB, decoded exactly as load_image decodes a
    file; a UserError names it (`name`) when it is not an image, is truncated, or has more than
    max_pixels pixels (default: Pillow's decompression-bomb limit, refused here rather than warned
    of), which is checked on the header, before any pixel is decoded."""
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    return _decode(io.BytesIO(data), f"image '{name}'", "send another image", size_hint=size_hint, max_pixels=limit)


def _decode(source, shown, advice, *, size_hint=None, max_pixels=None):
    """A path or a file object -> 8-bit RGB; what cannot be decoded is a UserError naming `shown`."""
    try:
        with Image.open(source) as img:
            if max_pixels and img.width * img.height > max_pixels:
                raise UserError(f"{shown} is {img.width} x {img.height} pixels, more than the {max_pixels:,} decoded "
                                f"safely; resize it first")
            if size_hint and img.format == "JPEG":
                img.draft("RGB", (size_hint, size_hint))
            img.load()
            if img.getexif().get(ORIENTATION, 1) != 1:  # a phone photo stored on its side
                img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except UserError:
        raise
    except Image.DecompressionBombError as error:
        raise UserError(f"{shown} is too large to decode safely ({error}); resize it first") from None
    except Image.UnidentifiedImageError:
        raise UserError(f"cannot read {shown}: it is not an image of a format Pillow reads; {advice}") from None
    except Exception as error:
        raise UserError(f"cannot read {shown} ({type(error).__name__}: {error}); {advice}") from None


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects: square size, channel statistics. Stored with every model."""

    image_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def to_dict(self):
        return {"image_size": int(self.image_size), "mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std]}

    @classmethod
    def from_dict(cls, data):
        return cls(int(data["image_size"]), tuple(float(m) for m in data["mean"]), tuple(float(s) for s in data["std"]))

    def resize(self, img):
        size = (self.image_size, self.image_size)
        return img if img.size == size else img.resize(size, Image.BILINEAR)

    @functools.cached_property
    def levels(self):
        """(3, 256) float32: the normalised value of each 8-bit level in each channel."""
        levels = np.arange(256, dtype=np.float32)[:, None] * np.float32(1.0 / 255.0)
        table = (levels - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(table.T)

    def normalize(self, img):
        """RGB PIL image of the right size -> float32 array (3, H, W), ImageNet-normalised.
        A table lookup per pixel: the same numbers as (x / 255 - mean) / std, 3-6x faster."""
        array = np.asarray(img)
        out = np.empty((3,) + array.shape[:2], dtype=np.float32)
        for channel in range(3):
            np.take(self.levels[channel], array[..., channel], out=out[channel])
        return out

    def __call__(self, img):
        """The evaluation transform: resize, then normalise."""
        return self.normalize(self.resize(img))

    def load(self, path):
        return self(load_image(path, size_hint=self.image_size))

    def load_bytes(self, data, *, name="image", max_pixels=None):
        """The same transform of an image sent as bytes (see load_image_bytes)."""
        return self(load_image_bytes(data, name=name, size_hint=self.image_size, max_pixels=max_pixels))
