"""Quantize an ONNX export to INT8: the pair model, embedder and head, calibrated on real images,
then checked against the float export on classes the calibration did not see. No PyTorch needed.

Example (for ONNX Runtime on CPUs; then evaluate or identify with the .int8.onnx file):
    python onnx_to_int8.py --onnx runs/exp1/model.onnx --calibration data/train
    python eval_tensorrt.py -v data/val -m runs/exp1/model.int8.onnx -o runs/exp1/eval_int8

Example (for TensorRT: symmetric activations, the only kind TensorRT takes):
    python onnx_to_int8.py --onnx runs/exp1/model.onnx --calibration data/train --target tensorrt
    python onnx_to_trt.py --onnx runs/exp1/model.int8.onnx -o runs/exp1/model.int8.engine

Writes OUT (default MODEL.int8.onnx) and OUT.embed.onnx and OUT.head.onnx beside it, with the
precision, target and calibration set in their metadata. Nothing is written when the check
finds the INT8 ROC-AUC more than --max-auc-drop below the float one.
"""

import os

from siamese.errors import UserError, cli
from siamese.options import MAX_IMAGES, PROBABILITY, SEED, add_out_option, script_parser, whole


def get_args_parser():
    p = script_parser(__doc__)
    p.add_argument("--onnx", required=True, type=str,
                   help="the float export (MODEL.onnx, with MODEL.embed.onnx and MODEL.head.onnx beside it)")
    add_out_option(p, "the INT8 .onnx file to write (default: MODEL.int8.onnx)")
    p.add_argument("--calibration", required=True, type=str,
                   help="folder of real images in the ROOT/ClassName/image layout, like the ones the model will see "
                        "(the training folder will do)")
    p.add_argument("--calibration-images", default=200, type=whole(1, MAX_IMAGES), help="images that calibrate (default: 200)")
    p.add_argument("--method", default="minmax",
                   help="how activation ranges are chosen from the calibration: minmax (the whole range seen) or "
                        "percentile (the 0.001-99.999 percentiles) (default: minmax)")
    p.add_argument("--target", default="onnxruntime",
                   help="the runtime the copy is for: onnxruntime (unsigned activations, fast on CPUs) or tensorrt "
                        "(signed symmetric ones, which TensorRT requires) (default: onnxruntime)")
    p.add_argument("--check-images", default=100, type=whole(2, MAX_IMAGES),
                   help="about this many images of whole classes are kept out of the calibration and every pair of "
                        "them scored by both models (default: 100)")
    p.add_argument("--max-auc-drop", default=0.01, type=PROBABILITY,
                   help="refuse the copy when its ROC-AUC on the check pairs is lower by more (0 to 1) (default: 0.01)")
    p.add_argument("--seed", default=0, type=SEED, help="seed of the draw of the check classes and calibration images (default: 0)")
    p.add_argument("--force", action="store_true", help="replace existing INT8 files at the out path")
    return p


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    from contextlib import ExitStack

    from siamese.contract import PARTS, part_path
    from siamese.files import check_new_file, check_not_inside, claim_beside, new_folder, remove_killed_temporaries, temporary_beside
    from siamese.lineage import replace_parts
    from siamese.quantize import Quantization, compare, quantize_export
    from siamese.runtime import OnnxRuntimeModel

    quantization = Quantization(args.calibration, images=args.calibration_images, method=args.method,
                                target=args.target, check_images=args.check_images, seed=args.seed)
    quantization.validate()
    out = args.out_path or os.path.splitext(args.onnx)[0] + ".int8.onnx"
    outs = {part: part_path(out, part) for part in PARTS}
    inputs = [part_path(args.onnx, part) for part in PARTS]

    def check_out_paths():
        for path in outs.values():
            check_new_file(path, inputs=inputs, force=args.force)

    check_out_paths()
    check_not_inside(out, [args.calibration])
    if not args.onnx.lower().endswith(".onnx"):
        raise UserError(f"'{args.onnx}' is not an .onnx file; quantize the float ONNX export (torch_to_onnx.py)")
    model = OnnxRuntimeModel(args.onnx, providers=["CPUExecutionProvider"])
    precision = model.metadata.get("siamese.precision", "fp32")
    if precision != "fp32":
        raise UserError(f"'{args.onnx}' is already {precision}; quantize the float32 export (torch_to_onnx.py "
                        f"without --fp16)")
    model.require_parts()
    with new_folder(os.path.dirname(os.path.abspath(out))), claim_beside(out, what="out path"), ExitStack() as temporaries:
        written = {part: temporaries.enter_context(temporary_beside(path)) for part, path in outs.items()}
        for path in outs.values():
            remove_killed_temporaries(path)
        _, check = quantize_export(model, written, quantization)
        report = compare(model, _copy_in(written), check)
        print(f"float32 against int8 on all {report['pairs']} pairs of the check classes: ROC-AUC "
              f"{report['float']['auc']:.4f} against {report['int8']['auc']:.4f}, EER {report['float']['eer']:.2%} "
              f"against {report['int8']['eer']:.2%}, largest similarity difference {report['max_difference']:.3f}")
        drop = report["float"]["auc"] - report["int8"]["auc"]
        if drop > args.max_auc_drop:
            raise UserError(f"the INT8 copy loses {drop:.4f} ROC-AUC (more than --max-auc-drop {args.max_auc_drop:g}); "
                            f"nothing was written: try --method percentile, or more --calibration-images")
        check_out_paths()  # again: another command may have written them
        replace_parts(written, outs)  # and names the engines built from the earlier copy, now stale
    print(f"wrote {out}, {outs['embed']} and {outs['head']} (int8 for {args.target})")
    return 0


def _copy_in(written):
    """The quantized copies, still at their temporary paths, as one deployed model."""
    from siamese.runtime import OnnxRuntimeModel

    return OnnxRuntimeModel(written["pair"], providers=["CPUExecutionProvider"],
                            part_paths=(written["embed"], written["head"]))


if __name__ == "__main__":
    raise SystemExit(main())
