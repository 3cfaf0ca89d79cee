"""Build a TensorRT engine from an ONNX file written by torch_to_onnx.py (TensorRT 10.x/11.x).

Example:
    python onnx_to_trt.py --onnx runs/exp1/model.onnx -o runs/exp1/model.engine --max-batch 64
    python onnx_to_trt.py --onnx runs/exp1/model.onnx -o runs/exp1/model_fp16.engine --fp16

Writes ENGINE and ENGINE.json (preprocessing and build facts), so the engine alone is enough
for infer_tensorrt.py and eval_tensorrt.py. When the embedder and head that torch_to_onnx.py
writes beside the ONNX model are there, it builds their engines too (ENGINE's name with .embed
and .head), with which the runtime embeds each image once; ENGINE.json names them. An engine runs only on the GPU model and TensorRT
version that built it. On TensorRT 11 (strongly typed), FP16 needs an FP16 ONNX model
(torch_to_onnx.py --fp16).
"""

from siamese.options import BATCH, script_parser, whole
from siamese.errors import cli


def get_args_parser():
    p = script_parser(__doc__)
    p.add_argument("--onnx", required=True, type=str, help="the .onnx file")
    p.add_argument("-o", "--out", "--engine", dest="engine", required=True, type=str, help="the engine file to write")
    p.add_argument("--fp16", action="store_true", help="FP16 kernels (TensorRT 10 flag; TensorRT 11 needs an FP16 ONNX model)")
    p.add_argument("--workspace", default=2048, type=whole(1, 2**20), help="builder workspace limit in MiB")
    p.add_argument("--min-batch", default=1, type=BATCH, help="smallest batch the engine accepts")
    p.add_argument("--opt-batch", default=8, type=BATCH, help="batch the engine is tuned for")
    p.add_argument("--max-batch", default=32, type=BATCH, help="largest batch the engine accepts")
    p.add_argument("--timing-cache", default=None, type=str, help="reuse/update this timing cache file (faster rebuilds)")
    p.add_argument("--force", action="store_true", help="replace an existing engine at -o/--out (never the ONNX file)")
    return p


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    import os
    from dataclasses import replace

    from siamese.files import check_new_file, claim_beside, new_folder
    from siamese.contract import engine_metadata_path, part_path
    from siamese.deployed import HEAD_BATCH
    from siamese.trt import EngineBuild, build_engine_file, import_tensorrt

    # the embedder and head exported beside the ONNX model get engines beside the engine
    parts = [part for part in ("embed", "head") if os.path.isfile(part_path(args.onnx, part))]
    engines = {part: part_path(args.engine, part) for part in ["pair", *parts]}

    def check_out_paths():
        for path in engines.values():
            for out, option in ((path, "-o/--out"), (engine_metadata_path(path), "-o/--out's sidecar")):
                check_new_file(out, inputs=[args.onnx, *(part_path(args.onnx, p) for p in parts), args.timing_cache],
                               force=args.force, option=option)

    check_out_paths()
    trt = import_tensorrt()
    try:
        from siamese.cuda_memory import default_cuda

        gpu = default_cuda().device_name()
    except Exception:
        gpu = None
    build = EngineBuild(fp16=args.fp16, workspace_mib=args.workspace, min_batch=args.min_batch, opt_batch=args.opt_batch,
                        max_batch=args.max_batch, timing_cache=args.timing_cache)
    head_build = replace(build, min_batch=1, opt_batch=HEAD_BATCH // 4, max_batch=HEAD_BATCH)
    # one build at a time into a path; a failed one leaves no new folder behind
    with new_folder(os.path.dirname(os.path.abspath(args.engine))), claim_beside(args.engine, what="engine path"):
        check_out_paths()  # again: another build may have written it meanwhile
        # the parts first, then the pair engine, which names them
        for part in parts:
            build_engine_file(part_path(args.onnx, part), engines[part], build if part == "embed" else head_build,
                              trt=trt, gpu_name=gpu)
        meta = build_engine_file(args.onnx, args.engine, build, trt=trt, gpu_name=gpu,
                                 extra_metadata={"parts": {p: os.path.basename(engines[p]) for p in parts}})
    print(f"wrote {args.engine} ({meta['precision']}, batches {meta['min_batch']}-{meta['max_batch']}, TensorRT "
          f"{meta['tensorrt_version']} on {meta['gpu']}) and {args.engine}.json"
          + (f"; and the {' and '.join(parts)} engines {', '.join(engines[p] for p in parts)}" if parts else
             f"; {args.onnx} has no embedder and head beside it (export it again with torch_to_onnx.py to embed each "
             f"image once)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
