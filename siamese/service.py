"""The service's HTTP face (FastAPI, served by uvicorn): the routes, decoding a request's fields
(multipart uploads or base64 in JSON), the bearer token, the body limit, errors as one line of
JSON, and the Prometheus metrics. What is answered is served.py's; the contract is in
docs/deployment.md (Service).

    app = create_app(Served(ServeSettings(engine="model.onnx")).start(), token=None, max_body_mb=20)
"""

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import math
import os
import sys
import time
import warnings
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.staticfiles import StaticFiles

from .batching import QueueFull
from .errors import UserError, user_message
from .served import NoGallery, NotAllowed

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
OPEN = ("/healthz", "/readyz", "/", "/static/", "/docs", "/openapi.json")  # no token needed: no data in them
MAX_FILES = 64  # images of one request
# The fields of each endpoint: kind (file, files, text, number, count) and whether it is required.
FIELDS = {
    "/verify": {"image1": ("file", True), "image2": ("file", True), "threshold": ("number", False)},
    "/identify": {"image": ("file", True), "top_k": ("count", False), "threshold": ("number", False)},
    "/enroll": {"class": ("text", True), "images": ("files", True)},
    "/embed": {"images": ("files", True)},
}


class RequestError(Exception):
    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.headers = status, headers


class BodyTooLarge(RequestError):
    def __init__(self, limit):
        super().__init__(413, f"the request body is over the {limit / 2**20:g} MiB this service takes (--max-body-mb); "
                              f"send smaller or fewer images", {"Connection": "close"})


class RequestTimeout(RequestError):
    def __init__(self, seconds):
        super().__init__(408, f"the request was not sent whole within {seconds:g} s (--request-timeout); send it "
                              f"again", {"Connection": "close"})


CLOSE = {"Connection": "close"}  # answers after which the rest of a request is not read
CLIENT_CLOSED = 499  # the client went away before its answer (nginx's status for it), in the metrics


def error_response(status, message, headers=None):
    # A client's text may hold lone surrogates (JSON's "\ud800"): shown escaped, never failing the answer.
    text = " ".join(str(message).split()).encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": text}, status_code=status, headers=headers)


def _raw_error(status, reason, message, close=True):
    """The bytes of a one-line JSON error answer, for refusals made below the ASGI app."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{'connection: close' + chr(13) + chr(10) if close else ''}\r\n").encode() + body


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("siamese_requests", "requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("siamese_request_seconds", "time to answer a request", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10))
        self.batch = Histogram("siamese_batch_images", "images embedded together in one call", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.queue = Gauge("siamese_queue_depth", "jobs waiting for the model", registry=self.registry)

    def endpoint(self, path):
        """The label of a path: the endpoint, or 'other' (unknown routes do not make new labels)."""
        if path in FIELDS or path in ("/", "/info", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
            return path
        for prefix in ("/gallery/", "/static/"):
            if path.startswith(prefix):
                return prefix.rstrip("/")
        return "other"


class Gate:
    """ASGI middleware in front of every route: the Host and Origin headers, the token, the body
    limit (on the declared length at once, and on the bytes as they arrive), the time a body may
    take to arrive, and the metrics of each request."""

    def __init__(self, app, *, token, max_body, metrics, request_timeout=30.0, origins=(), loopback=False):
        self.app, self.token, self.max_body, self.metrics = app, token, max_body, metrics
        self.request_timeout, self.origins, self.loopback = request_timeout, {o.lower() for o in origins}, loopback

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, endpoint = time.perf_counter(), [500], self.metrics.endpoint(scope["path"])

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal:
                await refusal(scope, receive, sending)
            else:
                await self.app(scope, self._limited(receive, start), sending)
        finally:
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    def _refusal(self, scope):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        foreign = self._foreign(headers, scope.get("scheme", "http"))
        if foreign:
            return error_response(403, foreign)
        if self.token and not (path in OPEN or path.startswith("/static/")):
            scheme, _, given = headers.get("authorization", "").strip().partition(" ")
            if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())):
                return error_response(401, "this service needs its token: send the header 'Authorization: Bearer "
                                           "<token>'", {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return error_response(413, BodyTooLarge(self.max_body), CLOSE)
        return None

    def _foreign(self, headers, scheme):
        """Why a request is refused as coming from elsewhere, or None: a Host that is not a loopback
        name on a service bound to loopback (DNS rebinding), an Origin other than the service's own
        or one of --allow-origin (another site's page posting to it)."""
        host = headers.get("host", "")
        if self.loopback and not is_loopback_host(host):
            return (f"the Host header {host[:80]!r} is not a loopback name (localhost, 127.x.x.x, [::1]) of this "
                    f"service bound to loopback; open it as http://localhost:PORT/")
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins | {f"{scheme}://{host}".lower()}:
            return (f"requests from pages of {origin[:80]!r} are refused; open the page of this service itself, or "
                    f"start serve.py with --allow-origin {origin[:80]}")
        return None

    def _limited(self, receive, start):
        received, whole = 0, False

        async def limited():
            nonlocal received, whole
            if whole:  # the body is in: waiting for a disconnect has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, start + self.request_timeout - time.perf_counter()))
            except asyncio.TimeoutError:
                raise RequestTimeout(self.request_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                whole = not message.get("more_body", False)
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        return limited


def is_loopback_host(host):
    """Whether a Host header names a loopback address: localhost, 127.x.x.x or [::1], with or without a port."""
    name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# --- decoding a request --------------------------------------------------------------------------

async def read_fields(request, path):
    """The fields of a request to `path` as {name: value}: bytes for a file, a list of bytes for
    files, a str or a float or an int; anything missing, extra or of the wrong kind is a 400."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        raw = await _multipart(request)
    elif kind == "application/json":
        raw = _json_fields(await request.body())
    else:
        raise RequestError(415, f"{path} takes multipart/form-data (file uploads) or application/json (images in "
                                f"base64), not '{kind or 'no content type'}'")
    spec = FIELDS[path]
    extra = sorted(set(raw) - set(spec))
    if extra:
        raise RequestError(400, f"{path} has no field '{extra[0][:40]}'; its fields are {', '.join(spec)}")
    fields = {}
    for name, (kind, required) in spec.items():
        if name not in raw:
            if required:
                raise RequestError(400, f"{path} needs the field '{name}' ({_KINDS[kind]})")
            continue
        fields[name] = _field(path, name, kind, raw[name])
    return fields


_KINDS = {"file": "one image", "files": "one or more images", "text": "a name", "number": "a number from 0 to 1",
          "count": "a whole number of at least 1"}


def request_body(path):
    """The OpenAPI description of an endpoint's fields (for /docs), from FIELDS."""
    def schema(kind, upload):
        one = {"type": "string", "format": "binary"} if upload else {"type": "string", "format": "base64"}
        return {"file": one, "files": {"type": "array", "items": one}, "text": {"type": "string"},
                "number": {"type": "number", "minimum": 0, "maximum": 1},
                "count": {"type": "integer", "minimum": 1}}[kind]

    content = {}
    for media, upload in (("multipart/form-data", True), ("application/json", False)):
        fields = FIELDS[path]
        content[media] = {"schema": {"type": "object", "properties": {n: schema(k, upload) for n, (k, _) in fields.items()},
                                     "required": [n for n, (_, required) in fields.items() if required]}}
    return {"requestBody": {"required": True, "content": content}}


async def _multipart(request):
    """{name: [('file', bytes) or ('text', str), ...]} of a multipart form."""
    form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
    try:
        raw = {}
        for name, value in form.multi_items():
            item = ("file", await value.read()) if isinstance(value, UploadFile) else ("text", value)
            raw.setdefault(name, []).append(item)
        return raw
    finally:
        await form.close()


def _json_fields(body):
    """{name: [('json', value)]} of a JSON object."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to read
        raise RequestError(400, "the body is not valid JSON (or nested too deep); send a JSON object of the "
                                "fields") from None
    if not isinstance(data, dict):
        raise RequestError(400, "the body is JSON but not an object; send {\"field\": value, ...}")
    return {name: [("json", value)] for name, value in data.items()}


def _field(path, name, kind, items):
    """One field's value from its items, checked against its kind."""
    wrong = RequestError(400, f"{path}: the field '{name}' must be {_KINDS[kind]}")
    if kind == "files":
        if len(items) == 1 and items[0][0] == "json":
            items = [("json", v) for v in items[0][1]] if isinstance(items[0][1], list) else [("bad", None)]
        if not items or len(items) > MAX_FILES:
            raise RequestError(400, f"{path}: the field '{name}' takes 1 to {MAX_FILES} images")
        return [_image(path, name, item, wrong) for item in items]
    if len(items) != 1:
        raise RequestError(400, f"{path}: the field '{name}' is given {len(items)} times; give it once")
    source, value = items[0]
    if kind == "file":
        return _image(path, name, items[0], wrong)
    if source == "file" or (source == "json" and kind == "text" and not isinstance(value, str)):
        raise wrong
    if kind == "text":
        return value
    return _number(value, kind, wrong)


def _image(path, name, item, wrong):
    source, value = item
    if source == "file":
        return value
    if source == "json" and isinstance(value, str):
        if value.startswith("data:") and "," in value:  # a data URL, as a browser's FileReader gives
            value = value.split(",", 1)[1]
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, f"{path}: the field '{name}' is not base64; send the image's bytes in base64 "
                                    f"(or upload it as multipart/form-data)") from None
    raise wrong


def _number(value, kind, wrong):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise wrong
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an integer of hundreds of digits
        raise wrong from None
    if not math.isfinite(number) or (kind == "number" and not 0 <= number <= 1):
        raise wrong
    if kind == "count":
        if number != int(number) or number < 1:
            raise wrong
        return int(number)
    return number


# --- the app -------------------------------------------------------------------------------------

def create_app(served, *, token=None, max_body_mb=20.0, metrics=None, request_timeout=30.0, origins=(),
               loopback=False):
    """The FastAPI app over a started Served; its lifespan's end stops the model thread after the
    queued work (uvicorn has then answered the requests in flight). origins: pages of other
    origins allowed to call it; loopback: bound to a loopback address (the Host header must name one)."""
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        served.stop()

    # An upload over the decompression-bomb limit is refused on its header (load_image_bytes): not
    # worth a warning in the log as well.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    metrics = metrics or Metrics()
    metrics.queue.set_function(lambda: served.batcher.depth)
    served.batcher.observe = metrics.batch.observe  # the size of each embedded batch
    app = FastAPI(title="Siamese service", lifespan=lifespan,
                  description="Verify pairs, identify against a gallery, enroll, embed (docs/deployment.md, Service)")
    app.router.redirect_slashes = False  # /gallery is a 404, not a redirect to /gallery/
    _add_errors(app)
    _add_routes(app, served, metrics)
    app.add_middleware(Gate, token=token, max_body=int(max_body_mb * 2**20), metrics=metrics,
                       request_timeout=request_timeout, origins=origins, loopback=loopback)
    return app


def _add_errors(app):
    """Every error is one line of JSON: {"error": "..."}; none of these writes a traceback."""

    @app.exception_handler(RequestError)
    async def request_error(request, error):
        return error_response(error.status, str(error), error.headers)

    @app.exception_handler(UserError)
    async def user_error(request, error):
        status = 403 if isinstance(error, NotAllowed) else 409 if isinstance(error, NoGallery) else 400
        return error_response(status, user_message(error))

    @app.exception_handler(QueueFull)
    async def queue_full(request, error):
        return error_response(503, f"the service is busy ({error}); try again in a second", {"Retry-After": "1"})

    @app.exception_handler(HTTPException)
    async def http_error(request, error):
        if error.status_code == 404:
            return error_response(404, f"there is no {request.url.path[:100]!r} here; the endpoints are listed at /docs")
        if error.status_code == 405:
            return error_response(405, f"{request.url.path[:100]} does not take {request.method}; see /docs",
                                  error.headers)
        return error_response(error.status_code, error.detail, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, error):
        return error_response(400, "the request does not fit the endpoint; see /docs")

    @app.exception_handler(ClientDisconnect)
    async def gone(request, error):  # nobody to answer: counted, not logged
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def bug(request, error):  # the last resort: the traceback is logged once by uvicorn
        return error_response(500, f"the service failed on this request ({type(error).__name__}); see its log")


def _add_routes(app, served, metrics):
    @app.post("/verify", openapi_extra=request_body("/verify"))
    async def verify(request: Request):
        """Two images (image1, image2) -> similarity, verdict and the threshold used."""
        fields = await read_fields(request, "/verify")
        return await served.verify(fields["image1"], fields["image2"], fields.get("threshold"))

    @app.post("/identify", openapi_extra=request_body("/identify"))
    async def identify(request: Request):
        """One image -> the top classes of the gallery, or 'unknown' (as identify.py answers)."""
        fields = await read_fields(request, "/identify")
        return await served.identify(fields["image"], fields.get("top_k"), fields.get("threshold"))

    @app.post("/enroll", openapi_extra=request_body("/enroll"))
    async def enroll(request: Request):
        """A class name and images -> added to the gallery (written and synced before the answer)."""
        if not served.settings.allow_enroll:  # before reading the images
            raise NotAllowed("enrollment is off; start serve.py with --allow-enroll to add images to the gallery")
        fields = await read_fields(request, "/enroll")
        return await served.enroll(fields["class"], fields["images"])

    @app.post("/embed", openapi_extra=request_body("/embed"))
    async def embed(request: Request):
        """Images -> their features, for a search of one's own."""
        fields = await read_fields(request, "/embed")
        return await served.embed(fields["images"])

    _add_pages(app, served, metrics)


def _add_pages(app, served, metrics):
    @app.api_route("/info", methods=["GET", "HEAD"])
    async def info():
        return served.info()

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz():
        return {"status": "ok"}

    @app.api_route("/readyz", methods=["GET", "HEAD"])
    async def readyz():
        if not served.ready:
            return error_response(503, "not ready: the model is loading or the service is stopping")
        return {"status": "ready"}

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.api_route("/gallery/{relative:path}", methods=["GET", "HEAD"])
    async def gallery_image(relative: str):
        path = served.gallery_file(relative)
        if path is None:
            raise HTTPException(404)
        return FileResponse(path)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


# --- running it ----------------------------------------------------------------------------------

def listen(host, port):
    """A socket bound to host:port, or a UserError naming them."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on such sockets' connections, and without
    # it each answer written in two parts waited 40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as error:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({getattr(error, 'strerror', None) or error}); give another "
                        f"--port (or --host)") from None
    return sock


def loopback_address(host):
    """Whether serve.py listens on a loopback address only."""
    return host.lower() == "localhost" or is_loopback_host(f"[{host}]" if ":" in host else host)


def check_open_files(max_connections, spare=256):
    """Let the process open max_connections sockets and spare files more: the soft limit raised
    toward the hard one, else a UserError. Past the limit every accept() fails and is logged."""
    import resource

    needed = max_connections + spare
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise UserError(f"--max-connections {max_connections} needs {needed} open files, and this process may "
                            f"open {hard} at most (ulimit -n); give --max-connections {max(1, hard - spare)} or less")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard))


def start_model(served):
    """served.start(); a Ctrl-C or SIGTERM meanwhile ends the process with one line (130 or 143) at
    once: the model thread may be inside its runtime, which must not be torn down under it."""
    import signal

    def terminated(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        served.start()
    except KeyboardInterrupt as stop:
        by_term = str(stop) == "SIGTERM"
        print(f"stopped by {'SIGTERM' if by_term else 'Ctrl-C'} while the model was loading", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(143 if by_term else 130)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _protocol(request_timeout, max_connections):
    """uvicorn's HTTP protocol (httptools) with two more limits: a connection beyond
    max_connections is answered 503 and closed at once, and one whose request headers are not in
    within request_timeout seconds is answered 408 and closed (uvicorn times out only idle
    keep-alive connections; the body's deadline is Gate's)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Guarded(HttpToolsProtocol):
        timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(_raw_error(503, "Service Unavailable", f"the service holds its {max_connections} "
                                           f"connections (--max-connections); try again in a second"))
                transport.close()
                return
            self._arm()

        def _arm(self):
            if self.timer is None:
                self.timer = self.loop.call_later(request_timeout, self._late)

        def _disarm(self):
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

        def _late(self):
            self.timer = None
            if not self.transport.is_closing():
                self.transport.write(_raw_error(408, "Request Timeout", f"the request headers were not sent within "
                                                f"{request_timeout:g} s (--request-timeout); send them again"))
                self.transport.close()

        def on_message_begin(self):
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self):
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

    return Guarded


def run_server(app, sock, *, graceful_s=60, access_log=True, request_timeout=30.0, max_connections=1000):
    """Serve app on the socket with uvicorn until SIGTERM or Ctrl-C; the requests in flight are
    answered first (for up to graceful_s), and it returns, rather than dying of the signal as
    uvicorn does by raising it again once stopped. access_log: a line per request on stderr. Once
    it listens, a line on stdout says where."""
    import uvicorn

    class Graceful(uvicorn.Server):
        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            self._captured_signals = []  # stopped as asked: nothing to raise again

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if not self.should_exit:
                host, port = sock.getsockname()[:2]
                print(f"serving on http://{f'[{host}]' if ':' in host else host}:{port} (the page at /; Ctrl-C or "
                      f"SIGTERM to stop)", flush=True)

    config = uvicorn.Config(app, timeout_graceful_shutdown=graceful_s, access_log=access_log,
                            http=_protocol(request_timeout, max_connections), limit_concurrency=max_connections + 1)
    Graceful(config).run(sockets=[sock])
