"""Files known by their content: the SHA-256 of a file's bytes, and an image's content key (its
first bytes). Wherever the toolkit decides that two files are the same (a derived file's sources,
a gallery index's images, a training image under another name, two copies of one image in a
folder) it asks here, never by name, size or time. Standard library only: the folder scan
(images.py) and the deployment side both use it.
"""

import hashlib

from .errors import UserError


def _sha256(path):
    """The SHA-256 of the file's bytes, read once in blocks (hashlib.file_digest is Python 3.11+)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest


def sha256_of(path):
    """The SHA-256 of a file's bytes (hex): what the toolkit knows a file by wherever it decides that
    two files are the same (a derived file's sources, the model files and images of a gallery
    index, training and evaluated images), never its name, size or time."""
    return _sha256(path).hexdigest()


# An image's key: the first bytes of its content's SHA-256. 8 bytes tell 20,000 training images
# from 20,000 evaluated ones with a chance of a false match of about 1 in 10^10.
KEY_BYTES = 8


def bytes_key(data):
    """The content key of bytes in memory (an uploaded image): the key its file will have."""
    return hashlib.sha256(data).digest()[:KEY_BYTES]


def content_keys(paths):
    """Each file's key (bytes of KEY_BYTES), in the order of `paths`: the same image under two
    names (a copy, a link, a class folder linked in from elsewhere) has one key."""
    keys = []
    for path in paths:
        try:
            keys.append(_sha256(path).digest()[:KEY_BYTES])
        except OSError as error:  # removed or made unreadable since the folder was scanned
            raise UserError(f"cannot read image '{path}' ({error.strerror}); check that it is there and readable, "
                            f"then run the command again") from None
    return keys


def shared_content(paths, known, *, keys=None):
    """[(path, what it shares its content with)] for each file among `paths` whose content key is
    in `known`: a dict {key: a file of that content} (then that file), or a set of keys (then the key).
    `keys`: the paths' keys when known already (a scan's), so no file is hashed twice."""
    keys = content_keys(paths) if keys is None else keys
    return [(path, known[key] if isinstance(known, dict) else key) for path, key in zip(paths, keys) if key in known]
