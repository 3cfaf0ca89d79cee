"""Score one pair of images with a deployed model: a TensorRT engine, or an .onnx file
(run by ONNX Runtime, so the same command works on a machine without a GPU). No PyTorch needed.

Example:
    python infer_tensorrt.py --image1 a.png --image2 b.png -m runs/exp1/model.engine
    python infer_tensorrt.py --image1 a.png --image2 b.png -m runs/exp1/model.onnx --json
"""

import json

from siamese.options import PROBABILITY, add_model_option, script_parser
from siamese.errors import cli


def get_args_parser():
    p = script_parser(__doc__)
    p.add_argument("--image1", required=True, type=str, help="first image")
    p.add_argument("--image2", required=True, type=str, help="second image")
    add_model_option(p, required=True)
    p.add_argument("--threshold", default=None, type=PROBABILITY, help="'same' at or above this (default: the model's, else 0.5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    import numpy as np

    from siamese.evaluate import resolve_threshold
    from siamese.metrics import digits_to_tell
    from siamese.runtime import load_deployed_model

    model = load_deployed_model(args.engine)
    img1 = model.preprocessing.load(args.image1)[None]
    img2 = model.preprocessing.load(args.image2)[None]
    similarity = float(model.predict(img1, img2)[0])
    threshold, source = resolve_threshold(args.threshold, model.threshold)
    same = bool(np.float32(similarity) >= threshold)
    if args.json:
        print(json.dumps({"image1": args.image1, "image2": args.image2, "similarity": similarity, "same": same,
                          "threshold": threshold, "threshold_source": source}))
    else:
        digits = digits_to_tell(similarity, threshold, fewest=2)  # the printed numbers agree with the verdict
        print(f"Similarity between the two images = {similarity:.{digits}f}")
        print(f"{'same' if same else 'different'} (threshold {threshold:.{digits}f}, {source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
