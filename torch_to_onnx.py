"""Export a checkpoint to self-contained ONNX files and check each against PyTorch.

Example:
    python torch_to_onnx.py -c runs/exp1/best.pth -o runs/exp1/model.onnx
    python torch_to_onnx.py -c runs/exp1/best.pth -o runs/exp1/model_fp16.onnx --fp16

Writes the pair model OUT (inputs img1, img2 (N, 3, H, W) sharing a dynamic batch dimension;
output similarity (N, 1) in [0, 1]) and beside it the embedder OUT.embed.onnx (images ->
features (N, D)) and the head OUT.head.onnx (features1, features2 -> similarity), with which
the runtimes embed each image once. Image size, normalisation, backbone, threshold and a
fingerprint of the weights go into each file's metadata.
"""

import os

from siamese.options import Number, add_out_option, onnx_opset, script_parser
from siamese.errors import UserError, cli


def get_args_parser():
    p = script_parser(__doc__)
    p.add_argument("-c", "--checkpoint", required=True, type=str, help="a .pth written by train.py")
    add_out_option(p, "the .onnx file to write (or a folder)", required=True)
    p.add_argument("--opset", default=20, type=onnx_opset, help="ONNX opset version")
    p.add_argument("--fp16", action="store_true", help="half-precision weights and arithmetic (inputs/output stay float32)")
    p.add_argument("--images", default=None, type=str,
                   help="folder of real images for the check (default: the checkpoint's validation folder, if present)")
    p.add_argument("--tolerance", default=None, type=Number(float, 0, 1, above=True),
                   help="largest allowed |ONNX - PyTorch| (default 1e-4; 1e-2 with --fp16)")
    p.add_argument("--force", action="store_true", help="replace an existing file at the out path (never the checkpoint)")
    return p


def check_images(folder, preprocessing, *, given, count=10):
    """Preprocessed real images for the check, or None when the checkpoint's validation folder is
    not on this machine (a folder given with --images must be there)."""
    import numpy as np

    from siamese.images import scan_folder

    if not folder or (not given and not os.path.isdir(folder)):
        return None
    paths = scan_folder(folder, check_images=False).paths
    chosen = [paths[i % len(paths)] for i in np.linspace(0, len(paths) - 1, count).astype(int)]
    return np.stack([preprocessing.load(p) for p in chosen])


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    from contextlib import ExitStack

    from siamese.checkpoint import load_model
    from siamese.errors import check_finite
    from siamese.export import export_onnx, fingerprint
    from siamese.files import check_new_file, claim_beside, new_folder, remove_killed_temporaries, temporary_beside
    from siamese.contract import PARTS, new_export_id, part_path
    from siamese.lineage import replace_parts

    if args.tolerance is not None and not check_finite(args.tolerance, "--tolerance") > 0:
        raise UserError(f"--tolerance must be above 0, not {args.tolerance}")
    out = os.path.join(args.out_path, "model.onnx") if os.path.isdir(args.out_path) else args.out_path
    outs = {part: part_path(out, part) for part in PARTS}

    def check_out_paths():
        for path in outs.values():
            check_new_file(path, inputs=[args.checkpoint], force=args.force)

    check_out_paths()
    model, checkpoint = load_model(args.checkpoint)
    folder = args.images or checkpoint.get("args", {}).get("val_path")
    images = check_images(folder, model.preprocessing, given=args.images is not None)  # before anything is written
    model_fingerprint, export_id = fingerprint(model), new_export_id()  # the id binds the three files
    # a failed export leaves nothing new behind, not even the folder it made for its out path
    with new_folder(os.path.dirname(os.path.abspath(out))), claim_beside(out, what="out path"), ExitStack() as temporaries:
        written = {part: temporaries.enter_context(temporary_beside(path)) for part, path in outs.items()}
        for path in outs.values():
            remove_killed_temporaries(path)
        # Each file is checked before any takes its out path: a failed check leaves earlier files as they were.
        for part in PARTS:
            metadata = export_onnx(model, written[part], threshold=checkpoint.get("threshold"), opset=args.opset,
                                   fp16=args.fp16, part=part, model_fingerprint=model_fingerprint, export_id=export_id)
            check_export(model, written[part], outs[part], images, folder, fp16=args.fp16, tolerance=args.tolerance,
                         part=part)
        check_out_paths()  # again: another command may have written them
        replace_parts(written, outs)  # and names the INT8 copies and engines of the earlier export, now stale
    size, dim = model.config["image_size"], model.scoring_dim
    print(f"wrote {out} ({os.path.getsize(out) / 2**20:.1f} MiB, opset {args.opset}, {metadata['siamese.precision']}); "
          f"inputs img1, img2 (N, 3, {size}, {size}), output similarity (N, 1)")
    print(f"wrote {outs['embed']} (images (N, 3, {size}, {size}) -> features (N, {dim})) and {outs['head']} "
          f"(features1, features2 (N, {dim}) -> similarity (N, 1)): the runtimes embed each image once with them")
    return 0


def check_export(model, written, out, images, folder, *, fp16, tolerance, part="pair"):
    """ONNX Runtime against PyTorch on real images (or random inputs); a UserError above the
    tolerance, with the failed file kept as OUT.failed for inspection."""
    import numpy as np
    from siamese.export import check_against_pytorch

    source = f"real images from {folder}"
    if images is None:
        size = model.config["image_size"]
        images = np.random.default_rng(0).standard_normal((10, 3, size, size)).astype(np.float32)
        source = "random inputs (pass --images FOLDER to check on real images)"
    tolerance = tolerance if tolerance is not None else (1e-2 if fp16 else 1e-4)
    difference = check_against_pytorch(model, written, images[:5], images[5:10], batch_sizes=(1, 5), part=part)
    what = {"pair": "", "embed": " embedder (relative to the features' scale)", "head": " head"}[part]
    print(f"ONNX Runtime vs PyTorch (float32){what} on {source}, batch sizes 1 and 5: max |difference| = "
          f"{difference:.2e} (tolerance {tolerance:g})")
    if not difference <= tolerance:
        os.replace(written, out + ".failed")
        kept = f"; the earlier '{out}' is as it was" if os.path.exists(out) else ""
        raise UserError(f"the exported {part} model differs from PyTorch by {difference:.2e} > {tolerance:g}; kept it "
                        f"as {out}.failed for inspection{kept}")


if __name__ == "__main__":
    raise SystemExit(main())
