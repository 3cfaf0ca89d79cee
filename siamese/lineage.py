"""What a derived file was made from. An INT8 copy records the float export's file it quantized,
an engine the ONNX file it was built from, each with what that file was made from in turn: by
path relative to the derived file's folder and by content hash (the `siamese.derived_from` key,
in the ONNX metadata or ENGINE.json). A runtime refuses a derived file whose source lies where
it says but is no longer the file it was made from (exported again since); a derived file
deployed without its sources runs as it is. No torch here (and ONNX only to list stale files).

The same content hash (content.py) names an image wherever training and evaluation ask whether
two images are one (content_keys): a validation image that is a training image under another
name, an evaluated image the model was trained on, two copies in one folder.
"""

import hashlib
import json
import os
import sys

from .content import KEY_BYTES, content_keys, sha256_of, shared_content  # noqa: F401 (known here too)
from .contract import PART_NAMES, export_holding
from .errors import UserError

KEY = "siamese.derived_from"


def content_digest(paths):
    """One SHA-256 (hex) of several files' contents, in order: a change to any of them changes it."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(bytes.fromhex(sha256_of(path)))
    return digest.hexdigest()


def _sources(meta, path):
    """[(absolute source path, sha256)] that the file at `path` (with metadata `meta`) was made from."""
    try:
        entries = json.loads(meta.get(KEY) or "[]")
        base = os.path.dirname(os.path.abspath(path))
        return [(os.path.normpath(os.path.join(base, str(rel))), str(digest)) for rel, digest in entries]
    except (TypeError, ValueError):
        raise UserError(f"'{path}' has unusable metadata: {KEY} is not a list of (path, hash) pairs; make it again "
                        f"(onnx_to_int8.py, onnx_to_trt.py)") from None


def derived_from(source_path, derived_path, source_meta):
    """The metadata entry of a file made at derived_path from source_path (whose metadata is
    source_meta): the source and everything it was made from, relative to the derived file."""
    base = os.path.dirname(os.path.abspath(derived_path))
    chain = [(os.path.abspath(source_path), sha256_of(source_path)), *_sources(source_meta, source_path)]
    return {KEY: json.dumps([[os.path.relpath(path, base), digest] for path, digest in chain])}


def check_sources(path, meta):
    """Refuse a derived file made from an earlier version of a file that lies where it says."""
    for source, digest in _sources(meta, path):
        if os.path.isfile(source) and sha256_of(source) != digest:
            raise UserError(f"'{path}' is stale: it was made from an earlier '{source}', which has changed since "
                            f"(exported again?); make it again from the current file (onnx_to_int8.py for an INT8 "
                            f"copy, onnx_to_trt.py for an engine), or move it away from '{source}' to run it as it is")


def _metadata_of(path):
    """The toolkit's metadata of an ONNX file or of an engine's ENGINE.json, or None."""
    try:
        if path.endswith(".json"):
            if os.path.getsize(path) > 2**20 or not os.path.isfile(path[:-len(".json")]):
                return None
            with open(path) as f:
                meta = json.load(f)
            return meta if isinstance(meta, dict) else None
        import onnx

        return {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    except Exception:  # not a file of the toolkit's: nothing derived from anything
        return None


def stale_files(paths):
    """The derived files beside `paths` (ONNX files and engines in their folders) made from an
    earlier version of one of them: [(derived file, its source)]."""
    paths = [p for p in paths if os.path.isfile(p)]
    current = {os.path.realpath(p): sha256_of(p) for p in paths}
    stale = []
    for folder in sorted({os.path.dirname(p) or "." for p in paths}):
        for name in sorted(os.listdir(folder)):
            file = os.path.join(folder, name)
            if (name.startswith(".") or not name.endswith((".onnx", ".json")) or not os.path.isfile(file)
                    or os.path.realpath(file) in current):  # the files themselves
                continue
            meta = _metadata_of(file)
            derived = file[:-len(".json")] if name.endswith(".json") else file
            try:
                sources = _sources(meta, derived) if meta and KEY in meta else ()
            except UserError:
                continue
            for source, digest in sources:
                if current.get(os.path.realpath(source), digest) != digest:
                    stale.append((derived, source))
                    break
    return stale


def _note(line):
    print(line, file=sys.stderr, flush=True)


def replace_parts(written, outs, *, log=_note):
    """Move each checked file `written[part]` to `outs[part]`, the embedder and head first (a
    crash between the renames leaves a pair model with parts of another export, which the
    runtimes tell by the fingerprint), and name the derived files this made stale, and the export
    whose part the new pair model took the place of (a forced -o MODEL.embed.onnx)."""
    holder, replaced = export_holding(outs["pair"]), os.path.exists(outs["pair"])
    for part in ("embed", "head", "pair"):
        os.replace(written[part], outs[part])
    if holder:
        pair, name = holder[0], PART_NAMES[holder[1]]
        what = f"replaced the {name} of the export {pair}" if replaced else f"is where the export {pair} looks for its {name}"
        log(f"note: {outs['pair']} {what}; the runtimes refuse that export until it is made again (torch_to_onnx.py)")
    stale = stale_files(outs.values())
    if stale:
        log(f"note: these files were made from the earlier {outs['pair']} (or its parts) and are now stale; the runtimes "
            f"refuse them until they are made again (onnx_to_int8.py, onnx_to_trt.py): "
            + ", ".join(derived for derived, _ in stale))
    return stale
