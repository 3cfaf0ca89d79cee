"""Serve a model over HTTP: verify pairs, identify images against a gallery, enroll new images,
embed images; requests arriving together are batched. A page to try it is at http://HOST:PORT/.

Example:
    python serve.py -m runs/exp1/model.onnx --gallery data/train --port 8000
    curl -F image1=@a.png -F image2=@b.png http://127.0.0.1:8000/verify

The model is whatever -m takes elsewhere (an ONNX export, its INT8 copy, a TensorRT engine), or a
checkpoint with -c (on PyTorch). One thread owns the model; the images of concurrent requests are
embedded together, up to --max-batch images or --max-wait-ms. The endpoints: docs/deployment.md
(Service), and /docs on the running service. SIGTERM or Ctrl-C answers the requests in flight,
then exits.
"""

import argparse
from urllib.parse import urlsplit

from siamese.errors import cli
from siamese.options import (BATCH, PROBABILITY, SHORTLIST, TOP_K, Number, add_model_option, add_pytorch_options,
                             script_parser, whole)


def get_args_parser():
    p = script_parser(__doc__)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("-c", "--checkpoint", type=str, help="a .pth written by train.py (runs on PyTorch)")
    add_model_option(model)
    p.add_argument("--gallery", default=None, type=str,
                   help="folder of known entities (ROOT/ClassName/image) for /identify and /enroll (default: none)")
    p.add_argument("--index", default=None, type=str,
                   help="the gallery index file: its features are reused at the next start, and enrollments update "
                        "it (default: none; the gallery is embedded at each start)")
    p.add_argument("--allow-enroll", action="store_true", help="let /enroll add images to the gallery folder")
    p.add_argument("--host", default="127.0.0.1", type=str, help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", default=8000, type=Number(int, 0, 65535), help="port to listen on (0: any free one)")
    p.add_argument("--token-file", default=None, type=str,
                   help="file holding a token: every request but /healthz and /readyz then needs 'Authorization: "
                        "Bearer TOKEN' (default: none)")
    p.add_argument("--threshold", default=None, type=PROBABILITY,
                   help="'same' (and a known class) at or above this (default: the model's, else 0.5)")
    p.add_argument("--top-k", default=5, type=TOP_K, help="classes /identify lists")
    p.add_argument("--shortlist", default="auto", type=SHORTLIST,
                   help="gallery images proposed by FAISS for the head to re-rank, as identify.py --shortlist")
    p.add_argument("--max-batch", default=32, type=BATCH, help="images embedded together at most")
    p.add_argument("--max-wait-ms", default=2.0, type=Number(float, 0, 10_000),
                   help="how long the first request of a batch waits for others to join it")
    p.add_argument("--queue", default=256, type=whole(1, 100_000),
                   help="requests waiting for the model at most; beyond, 503 with Retry-After")
    p.add_argument("--max-body-mb", default=20.0, type=Number(float, 0, 4096, above=True), help="a request body over this is refused (413)")
    p.add_argument("--max-pixels", default=40_000_000, type=whole(1, 2**31),
                   help="an uploaded image over this many pixels is refused on its header, before decoding (400)")
    p.add_argument("--decoders", default=2, type=whole(1, 64),
                   help="uploads decoded at once; the requests waiting for a decoder count in --queue")
    p.add_argument("--max-connections", default=1000, type=whole(1, 1_000_000),
                   help="open connections at most; beyond, 503 at once (the open-files limit is raised to fit)")
    p.add_argument("--request-timeout", default=30.0, type=Number(float, 0, 3600, above=True),
                   help="seconds a client has to send a whole request (headers and body); later: 408, closed")
    p.add_argument("--allow-origin", action="append", default=None, metavar="ORIGIN",
                   help="let pages of this origin (https://example.org) call the service; repeatable (default: "
                        "only the service's own page)")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                   help="a line per request on stderr (--no-access-log: none; /metrics still counts them)")
    add_pytorch_options(p, device_help="with -c: auto, cpu, cuda or cuda:N")
    return p


def origin(text):
    """An --allow-origin: scheme://host[:port], as a browser sends it in the Origin header."""
    from siamese.errors import UserError

    parts = urlsplit(text.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise UserError(f"--allow-origin '{text}' is not an origin; give scheme://host[:port], e.g. "
                        f"https://example.org")
    return text.rstrip("/")


def read_token(path):
    from siamese.errors import UserError

    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read --token-file '{path}' ({getattr(error, 'strerror', None) or error}); give a "
                        f"readable text file holding the token") from None
    if not token or any(c.isspace() for c in token):
        raise UserError(f"--token-file '{path}' holds no token (or one with spaces); write one word in it")
    return token


@cli
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    from siamese.served import Served, ServeSettings
    from siamese.service import check_open_files, create_app, listen, loopback_address, run_server, start_model

    token = read_token(args.token_file) if args.token_file else None
    origins = [origin(text) for text in args.allow_origin or ()]
    settings = ServeSettings(engine=args.engine, checkpoint=args.checkpoint, gallery=args.gallery, index=args.index,
                             allow_enroll=args.allow_enroll, threshold=args.threshold, top_k=args.top_k,
                             shortlist=args.shortlist, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             queue=args.queue, max_pixels=args.max_pixels, decoders=args.decoders, device=args.device, amp=args.amp, compile=args.compile,
                             tf32=args.tf32, channels_last=args.channels_last)
    served = Served(settings)  # the settings and the gallery folder checked
    check_open_files(args.max_connections)
    with listen(args.host, args.port) as listening:  # a port in use: one line, before the model is loaded
        start_model(served)  # Ctrl-C or SIGTERM meanwhile: one line, 130 or 143
        app = create_app(served, token=token, max_body_mb=args.max_body_mb, request_timeout=args.request_timeout,
                         origins=origins, loopback=loopback_address(args.host))
        try:
            run_server(app, listening, access_log=args.access_log, request_timeout=args.request_timeout,
                       max_connections=args.max_connections)
        finally:
            served.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
