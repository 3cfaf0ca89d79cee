"""Adding images to a gallery folder as the service's /enroll does: a class name that is a safe
folder name, and image files written so that an enrollment that was answered survives a kill (or
a power cut) the next instant. No torch here."""

import contextlib
import io
import os
import unicodedata
import uuid

from PIL import Image

from .errors import UserError
from .files import atomic_open, inside, sync_folder
from .images import IMAGE_EXTENSIONS

MAX_NAME_BYTES = 200  # below the 255 of common file systems, with room for a temporary name
# Names Windows keeps for devices (a gallery may be copied there), with or without an extension.
RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"{d}{i}" for d in ("COM", "LPT") for i in [*range(1, 10), *"¹²³"])}
FORBIDDEN = '/\\<>:"|?*'  # not in a folder name on Windows (and '/' nowhere)


def check_class_name(name):
    """The class name in NFC (one spelling of 'é', one folder), or a UserError: a folder name of its
    own (none of /\\<>:"|?*, no control characters or lone surrogates, no leading combining mark,
    not hidden, not reserved), as the gallery's scan reads it back."""
    if not isinstance(name, str) or not name.strip():
        raise UserError("give the class a name (the field 'class')")
    shown = ascii(name[:60])
    if any(c in FORBIDDEN for c in name) or any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")
                                                 for c in name):
        raise UserError(f"class {shown} holds one of {FORBIDDEN} or a control character; give a plain name")
    name = unicodedata.normalize("NFC", name)
    if unicodedata.category(name[0]).startswith("M"):
        raise UserError(f"class {shown} starts with a combining mark; give a plain name")
    if name.startswith(".") or name != name.strip() or name.endswith("."):
        raise UserError(f"class {shown} starts with a dot, or starts or ends with a space or ends with a dot (a hidden "
                        f"or unreadable folder name); give a plain name")
    if name.split(".")[0].upper() in RESERVED:
        raise UserError(f"class {shown} is a name reserved for devices on some systems; give another name")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise UserError(f"class name of {len(name.encode('utf-8'))} bytes is too long; give at most {MAX_NAME_BYTES}")
    return name


def extension_of(data):
    """The file extension for image bytes already decoded once ('.png' for a PNG), one the scan reads."""
    with Image.open(io.BytesIO(data)) as img:
        image_format = img.format
    preferred = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif"}
    if image_format in preferred:
        return preferred[image_format]
    found = sorted(ext for ext, fmt in Image.EXTENSION.items() if fmt == image_format and ext in IMAGE_EXTENSIONS)
    if not found:
        raise UserError(f"images in the {image_format} format cannot be kept in a gallery; send PNG or JPEG")
    return found[0]


def check_new_content(folder, name, images):
    """Refuse, before anything is written, an image [(bytes, extension)] sent for class `name` whose
    bytes are an image of another class of the gallery (`folder`, its scan): one image cannot be
    of two classes, and the scan refuses a gallery that holds one (a copy within the class is
    set aside by the scan)."""
    from .content import bytes_key

    owner = {key: folder.classes[label] for key, label in zip(folder.image_keys(), folder.labels)}
    for i, (data, _) in enumerate(images):
        other = owner.get(bytes_key(data))
        if other is not None and other != name:
            raise UserError(f"images[{i}] is already an image of class '{other}' (the same bytes); one image cannot be "
                            f"of two classes: send another image, or enroll it to '{other}'")


def write_class_images(root, name, images):
    """Write images [(bytes, extension)] into root/name (created if new), each file whole and
    synced, and the folders' entries synced too; the written paths, as the scan spells them."""
    folder = os.path.join(root, check_class_name(name))
    if os.path.lexists(folder) and (not os.path.isdir(folder) or os.path.islink(folder) or not inside(folder, root)):
        raise UserError(f"class '{name}' is not a folder of the gallery (a file or a link there); give another name")
    if not os.path.isdir(folder):
        os.mkdir(folder)
        sync_folder(root)
    written = []
    for data, extension in images:
        path = os.path.join(folder, f"enrolled-{uuid.uuid4().hex[:16]}{extension}")
        with atomic_open(path, "wb") as f:  # synced, then renamed into place
            f.write(data)
        written.append(path)
    sync_folder(folder)
    return written


def remove_class_images(root, written):
    """Undo write_class_images: remove the written files, and their folder if it is left empty."""
    for path in written:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    folders = {os.path.dirname(path) for path in written}
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty: a class that was there before
            os.rmdir(folder)
    for folder in folders | {root}:
        if os.path.isdir(folder):
            sync_folder(folder)
