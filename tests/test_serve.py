"""serve.py as a user runs it: a real uvicorn process over real sockets, with torch made
unimportable (the deployed side needs none). One server serves the fast tests of this module;
the tests that kill or stop a server start their own and are slow."""

import base64
import concurrent.futures
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, make_folder

TOKEN = "s3cret-token"
# serve.py's own main, with torch and torchvision unimportable, as on a machine without them.
NO_TORCH = """
import runpy, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision'):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoTorch())
sys.path.insert(0, '.')
sys.argv = ['serve.py'] + sys.argv[1:]
runpy.run_path('serve.py', run_name='__main__')
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args, log_path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-c", NO_TORCH, *args, "--port", str(self.port)], cwd=ROOT,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve.py ended: {self.output()[-3000:]}"
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"serve.py did not answer: {self.output()[-3000:]}")

    def output(self):
        if not self.log.closed:
            self.log.flush()
        return open(self.log_path).read()

    def client(self, token=TOKEN):
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"} if token else {},
                            timeout=60)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)
        self.log.close()


def _gallery_copy(tiny_dataset, where):
    """A copy of the validation folder, with one image that is a link out of it."""
    gallery = str(where / "gallery")
    shutil.copytree(tiny_dataset[1], gallery)
    outside = where / "outside.png"
    shutil.copy(os.path.join(tiny_dataset[0], "class_0", "img_00.png"), outside)
    os.symlink(outside, os.path.join(gallery, "class_0", "linked_out.png"))
    return gallery


def _start(tmp, onnx_model, gallery, *extra):
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    return Server(["-m", onnx_model, "--gallery", gallery, "--index", str(tmp / "index.npz"), "--allow-enroll",
                   "--token-file", str(token_file), "--max-body-mb", "1", *extra], str(tmp / "server.log"))


@pytest.fixture(scope="module")
def server(onnx_model, tiny_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    running = _start(tmp, onnx_model, _gallery_copy(tiny_dataset, tmp), "--max-batch", "8", "--max-wait-ms", "50")
    running.gallery = str(tmp / "gallery")
    yield running
    running.stop()
    assert "Traceback" not in running.output()  # no bad input of the tests below wrote one


def _image_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _images(tiny_dataset):
    folder = tiny_dataset[1]
    return [os.path.join(folder, c, f) for c in sorted(os.listdir(folder)) for f in sorted(os.listdir(os.path.join(folder, c)))]


def _png(width, height, noise=False):
    array = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8) if noise else \
        np.zeros((height, width, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _png_header(width, height):
    """A PNG that declares width x height pixels (and holds almost none)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _bomb():
    """A real decompression bomb: a small file of 10,000 x 10,000 pixels."""
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, "PNG")
    return buffer.getvalue()


def _one_line_error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and body["error"], body
    return body["error"]


# --- answers -------------------------------------------------------------------------------------

def test_verify_answers_as_infer_tensorrt(server, onnx_model, tiny_dataset, capsys):
    import infer_tensorrt

    paths = _images(tiny_dataset)
    with server.client() as client:
        for a, b in ((paths[0], paths[1]), (paths[0], paths[-1]), (paths[3], paths[7])):
            assert infer_tensorrt.main(["--image1", a, "--image2", b, "-m", onnx_model, "--json"]) == 0
            expected = json.loads(capsys.readouterr().out)
            got = client.post("/verify", files={"image1": _image_bytes(a), "image2": _image_bytes(b)}).json()
            assert got["similarity"] == pytest.approx(expected["similarity"], abs=1e-6)
            assert got["same"] == expected["same"] and got["threshold"] == expected["threshold"]
            assert got["threshold_source"] == "model"  # in a word (the model stores one)
            as_json = client.post("/verify", json={"image1": base64.b64encode(_image_bytes(a)).decode(),
                                                   "image2": base64.b64encode(_image_bytes(b)).decode(),
                                                   "threshold": 0.25}).json()
            assert as_json["similarity"] == pytest.approx(expected["similarity"], abs=1e-6)
            assert as_json["threshold"] == 0.25 and as_json["threshold_source"] == "request"


def test_identify_answers_as_identify_py(server, onnx_model, tiny_dataset, capsys):
    import identify

    with server.client() as client:
        for query in _images(tiny_dataset)[::9]:
            assert identify.main(["--gallery", server.gallery, "--query", query, "-m", onnx_model, "--json",
                                  "--top-k", "3"]) == 0
            expected = json.loads(capsys.readouterr().out)
            got = client.post("/identify", files={"image": _image_bytes(query)}, data={"top_k": "3"}).json()
            assert [m["class"] for m in got["matches"]] == [r["class"] for r in expected["matches"]]
            assert [m["gallery_image"] for m in got["matches"]] == \
                   [os.path.relpath(r["gallery_image"], server.gallery) for r in expected["matches"]]
            np.testing.assert_allclose([m["similarity"] for m in got["matches"]],
                                       [r["similarity"] for r in expected["matches"]], atol=1e-6)
            assert got["threshold"] == expected["threshold"]
            assert got["verdict"] == (expected["matches"][0]["class"] if expected["matches"][0]["verdict"] == "match"
                                      else "unknown")
            for match in got["matches"]:  # the image linked in from outside the gallery has no thumbnail
                if match["gallery_image"] == os.path.join("class_0", "linked_out.png"):
                    assert match["thumbnail"] is None
                    assert client.get("/gallery/class_0/linked_out.png").status_code == 404
                else:
                    thumbnail = client.get(match["thumbnail"])
                    assert thumbnail.status_code == 200 and thumbnail.content == \
                        _image_bytes(os.path.join(server.gallery, match["gallery_image"]))


def test_embed_and_info(server, tiny_dataset):
    paths = _images(tiny_dataset)[:3]
    with server.client() as client:
        answer = client.post("/embed", files=[("images", _image_bytes(p)) for p in paths]).json()
        info = client.get("/info").json()
        assert client.get("/docs").status_code == 200
        described = client.get("/openapi.json").json()["paths"]["/verify"]["post"]["requestBody"]["content"]
        assert described["multipart/form-data"]["schema"]["required"] == ["image1", "image2"]
    assert len(answer["features"]) == 3 and answer["dim"] == len(answer["features"][0])
    assert info["model"] == "model.onnx" and info["runtime"] == "onnxruntime" and info["gallery"] and info["enroll"]
    assert info["max_batch"] == 8 and info["image_size"] == 32


def test_concurrent_requests_are_batched(server, tiny_dataset):
    paths = _images(tiny_dataset)
    with server.client() as client:
        def one(i):
            files = {"image1": _image_bytes(paths[i % len(paths)]), "image2": _image_bytes(paths[(i * 7) % len(paths)])}
            return client.post("/verify", files=files).status_code

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            assert set(pool.map(one, range(48))) == {200}
        metrics = client.get("/metrics").text
    single = float(re.search(r'siamese_batch_images_bucket\{le="1.0"\} (\S+)', metrics).group(1))
    batches = float(re.search(r"siamese_batch_images_count (\S+)", metrics).group(1))
    assert batches > single  # some batches held more than one image
    assert re.search(r'siamese_requests_total\{endpoint="/verify",status="200"\} ([0-9.]+)', metrics)
    assert "siamese_queue_depth" in metrics and "siamese_request_seconds_bucket" in metrics


# --- bad input -----------------------------------------------------------------------------------

def _bad_requests(good):
    """(name, request keyword arguments for client.post, path, status)."""
    b64 = base64.b64encode(good).decode()
    truncated = _png(64, 64, noise=True)
    return [
        ("not an image", dict(files={"image1": good, "image2": b"hello, not an image"}), "/verify", 400),
        ("truncated", dict(files={"image1": good, "image2": truncated[:len(truncated) // 2]}), "/verify", 400),
        ("decompression bomb", dict(files={"image1": good, "image2": _bomb()}), "/verify", 400),
        ("30000 x 30000", dict(files={"image1": good, "image2": _png_header(30_000, 30_000)}), "/verify", 400),
        ("missing field", dict(files={"image1": good}), "/verify", 400),
        ("extra field", dict(files={"image1": good, "image2": good, "image3": good}), "/verify", 400),
        ("wrong content type", dict(content=b"image1=a", headers={"Content-Type": "text/plain"}), "/verify", 415),
        ("threshold NaN", dict(files={"image1": good, "image2": good}, data={"threshold": "nan"}), "/verify", 400),
        ("threshold 2", dict(json={"image1": b64, "image2": b64, "threshold": 2}), "/verify", 400),
        ("threshold text", dict(json={"image1": b64, "image2": b64, "threshold": "high"}), "/verify", 400),
        ("not base64", dict(json={"image1": "%%%", "image2": b64}), "/verify", 400),
        ("JSON not an object", dict(json=[b64, b64]), "/verify", 400),
        ("broken JSON", dict(content=b"{", headers={"Content-Type": "application/json"}), "/verify", 400),
        ("top_k 0", dict(files={"image": good}, data={"top_k": "0"}), "/identify", 400),
        ("no images", dict(json={"images": []}), "/embed", 400),
        ("unknown route", dict(json={}), "/nowhere", 404),
        ("class with a slash", dict(files={"images": good}, data={"class": "../escape"}), "/enroll", 400),
        ("hidden class", dict(files={"images": good}, data={"class": ".hidden"}), "/enroll", 400),
        ("control character", dict(files={"images": good}, data={"class": "a\x01b"}), "/enroll", 400),
        ("reserved name", dict(files={"images": good}, data={"class": "CON"}), "/enroll", 400),
        ("enroll a bad image", dict(files=[("images", good), ("images", b"junk")], data={"class": "never"}), "/enroll",
         400),
        ("over --max-pixels", dict(files={"image1": good, "image2": _png_header(9400, 9400)}), "/verify", 400),
        ("a 400-digit threshold", dict(content=b'{"threshold": 1%s}' % (b"0" * 400), headers=JSON), "/verify", 400),
        ("a 400-digit top_k", dict(content=b'{"image": "%s", "top_k": 1%s}' % (b64.encode(), b"0" * 400),
                                   headers=JSON), "/identify", 400),
        ("a lone surrogate in a key", dict(content=b'{"\\ud800": 1}', headers=JSON), "/verify", 400),
        ("a lone surrogate in a class", dict(content=b'{"class": "\\ud800x", "images": ["%s"]}' % b64.encode(),
                                             headers=JSON), "/enroll", 400),
        ("nested too deep", dict(content=b"[" * 100_000 + b"]" * 100_000, headers=JSON), "/verify", 400),
        *[(f"class {name!r}", dict(files={"images": good}, data={"class": name}), "/enroll", 400)
          for name in ("a*b?", "<x>", "a:b", 'q"uote', "p|q", "COM\u00b9", "lpt\u00b2.txt", "\u0301e")],
    ]


JSON = {"Content-Type": "application/json"}


def test_bad_input_is_a_4xx_of_one_line_and_the_server_goes_on(server, tiny_dataset):
    good = _image_bytes(_images(tiny_dataset)[0])
    before = sorted(os.listdir(server.gallery))
    with server.client() as client:
        for name, request, path, status in _bad_requests(good):
            error = _one_line_error(client.post(path, **request), status)
            assert "Traceback" not in error, name
            assert client.post("/verify", files={"image1": good, "image2": good}).status_code == 200, name
        assert _one_line_error(client.get("/gallery/../../../etc/passwd"), 404)
        assert _one_line_error(client.get("/gallery/%2e%2e/%2e%2e/etc/passwd"), 404)
        assert _one_line_error(client.get("/gallery/" + os.path.abspath(__file__)), 404)
        assert _one_line_error(client.get("/gallery/class_0/linked_out.png"), 404)  # a link out of the gallery
        assert client.get("/gallery/class_0/img_00.png").status_code == 200
        assert _one_line_error(client.get("/verify"), 405)
    assert sorted(os.listdir(server.gallery)) == before  # a refused enrollment wrote nothing


def _raw(port, head, body_chunks=(), pause=0.0):
    """Send a raw HTTP request (head, then each chunk), and return the status line and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):  # the server answered before the end
            pass
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            data = s.recv(65536)
            if not data:
                break
            answer += data
    return answer.split(b"\r\n", 1)[0], answer.split(b"\r\n\r\n", 1)[-1]


def test_a_body_over_the_limit_is_413_while_it_arrives(server):
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    declared = b"POST /verify HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + \
               b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:  # answered, then closed
        s.sendall(declared)
        answer = b""
        while data := s.recv(65536):
            answer += data
    assert b" 413 " in answer.split(b"\r\n")[0] and b"connection: close" in answer.lower()
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    chunk = b"x" * 65536
    streamed = b"POST /verify HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + \
               b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    part = b'--b\r\nContent-Disposition: form-data; name="image1"; filename="a.png"\r\n\r\n'
    chunks = [b"%x\r\n%s\r\n" % (len(data), data) for data in [part] + [chunk] * 40]
    status, body = _raw(server.port, streamed, chunks)
    assert b" 413 " in status and "MiB" in json.loads(body)["error"]
    with server.client() as client:
        assert client.get("/info").status_code == 200


def test_a_slow_client_does_not_hold_up_the_others(server, tiny_dataset):
    good = _image_bytes(_images(tiny_dataset)[0])
    slow = socket.create_connection(("127.0.0.1", server.port))
    try:
        slow.sendall(b"POST /verify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 100000\r\n\r\n--b")
        with server.client() as client:
            start = time.monotonic()
            for _ in range(3):
                assert client.post("/verify", files={"image1": good, "image2": good}).status_code == 200
            assert time.monotonic() - start < 10
    finally:
        slow.close()


def test_held_open_and_disconnecting_clients_are_counted_without_a_traceback(server):
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    head = (b"POST /verify HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth +
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(head)
        time.sleep(0.3)  # being read: then gone
    with server.client() as client:
        deadline = time.monotonic() + 10
        while not re.search(r'siamese_requests_total\{endpoint="/verify",status="499"\}', client.get("/metrics").text):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert 'status="500"' not in client.get("/metrics").text
    assert "ClientDisconnect" not in server.output()


def test_the_page_of_another_site_and_a_foreign_host_are_refused(server, tiny_dataset):
    good = _image_bytes(_images(tiny_dataset)[0])
    files = [("images", good)]
    with server.client() as client:
        refused = client.post("/enroll", files=files, data={"class": "csrf"}, headers={"Origin": "http://evil.example"})
        assert "--allow-origin" in _one_line_error(refused, 403)
        assert not os.path.exists(os.path.join(server.gallery, "csrf"))
        assert _one_line_error(client.get("/info", headers={"Origin": "null"}), 403)
        own = client.post("/verify", files={"image1": good, "image2": good}, headers={"Origin": server.url})
        assert own.status_code == 200
        for host in ("evil.example", f"evil.example:{server.port}", "10.0.0.1"):
            assert "Host" in _one_line_error(client.get("/info", headers={"Host": host}), 403)
        for host in (f"localhost:{server.port}", f"127.0.0.2:{server.port}", "[::1]", "localhost"):
            assert client.get("/info", headers={"Host": host}).status_code == 200, host


def test_head_probes_the_gallery_root_and_a_lower_case_bearer(server):
    with server.client(token=None) as anonymous:
        for path in ("/healthz", "/", "/readyz"):
            answer = anonymous.head(path)
            assert answer.status_code == 200 and answer.content == b"", path
        assert anonymous.get("/info", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200  # RFC 7235
        assert _one_line_error(anonymous.get("/gallery", headers={"Authorization": f"Bearer {TOKEN}"}), 404)
    assert f"serving on http://127.0.0.1:{server.port} (the page at /" in server.output()


def test_the_token(server):
    with server.client(token=None) as anonymous:
        assert _one_line_error(anonymous.get("/info"), 401)
        assert _one_line_error(anonymous.post("/verify", json={}), 401)
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/readyz").json() == {"status": "ready"}
        assert anonymous.get("/").status_code == 200  # the page itself asks for the token
    with server.client(token="wrong") as wrong:
        assert _one_line_error(wrong.get("/metrics"), 401)


# --- enrollment ----------------------------------------------------------------------------------

def _new_images(tiny_dataset):
    """Images that are not in the gallery (a copy of the validation folder, with the first training
    image linked in): enrolling a gallery image under another class is refused."""
    folder = tiny_dataset[0]
    return [os.path.join(folder, c, f) for c in sorted(os.listdir(folder))[1:] for f in sorted(os.listdir(os.path.join(folder, c)))]


def test_concurrent_enrollments_are_all_kept(server, tiny_dataset, onnx_model, tmp_path):
    paths = _new_images(tiny_dataset)
    with server.client() as client:
        classes = client.get("/info").json()["classes"]

        def enroll(i):
            files = [("images", _image_bytes(paths[i])), ("images", _image_bytes(paths[i + 6]))]
            return client.post("/enroll", files=files, data={"class": f"new_{i}"}).json()

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(enroll, range(4)))
        assert all(a["added"] == 2 for a in answers) and {a["class"] for a in answers} == {f"new_{i}" for i in range(4)}
        assert client.get("/info").json()["classes"] == classes + 4
        found = client.post("/identify", files={"image": _image_bytes(paths[0])}, data={"top_k": "50"}).json()
    assert {f"new_{i}" for i in range(4)} <= {m["class"] for m in found["matches"]}
    for i in range(4):
        assert len(os.listdir(os.path.join(server.gallery, f"new_{i}"))) == 2


def test_enrolling_a_gallery_image_under_another_class_is_refused(server, tiny_dataset):
    """One image cannot be of two classes: refused before anything is written (the gallery's scan
    would refuse the gallery at the next start)."""
    copy = _image_bytes(os.path.join(server.gallery, "class_1", "img_02.png"))
    before = sorted(os.listdir(server.gallery))
    with server.client() as client:
        answer = client.post("/enroll", files={"images": copy}, data={"class": "copied"})
    assert _one_line_error(answer, 400) and "already an image of class 'class_1'" in answer.json()["error"]
    assert sorted(os.listdir(server.gallery)) == before


def test_a_refused_enrollment_writes_nothing_and_shows_no_server_path(server, tiny_dataset):
    good = _png(20, 20, noise=True)  # an image of no class of the gallery
    corrupt = os.path.join(server.gallery, "class_0", "zzcorrupt.png")
    with open(corrupt, "wb") as f:
        f.write(b"garbage\n")
    try:
        with server.client() as client:
            error = _one_line_error(client.post("/enroll", files=[("images", good)], data={"class": "afterjunk"}), 400)
        assert "class_0/zzcorrupt.png" in error and server.gallery not in error and os.sep + "tmp" not in error
        assert not os.path.exists(os.path.join(server.gallery, "afterjunk"))
    finally:
        os.remove(corrupt)
    with server.client() as client:  # one folder for both spellings of 'é'
        for name in ("caf\u00e9", "cafe\u0301"):
            assert client.post("/enroll", files=[("images", good)], data={"class": name}).json()["class"] == "caf\u00e9"
    assert len(os.listdir(os.path.join(server.gallery, "caf\u00e9"))) == 2
    assert not os.path.exists(os.path.join(server.gallery, "cafe\u0301"))


# --- stopping ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_an_answered_enrollment_survives_kill_9(onnx_model, tiny_dataset, tmp_path, capsys):
    import identify

    gallery = _gallery_copy(tiny_dataset, tmp_path)
    first = _start(tmp_path, onnx_model, gallery)
    images = [_image_bytes(path) for path in _new_images(tiny_dataset)[:2]]
    with first.client() as client:
        answer = client.post("/enroll", json={"class": "kept", "images": [base64.b64encode(i).decode() for i in images]})
        first.process.send_signal(signal.SIGKILL)  # the next instant
    assert answer.status_code == 200
    first.process.wait(30)
    first.log.close()
    assert len(os.listdir(os.path.join(gallery, "kept"))) == 2
    assert identify.main(["--gallery", gallery, "--query", _images(tiny_dataset)[0], "-m", onnx_model,
                          "--index", str(tmp_path / "index.npz"), "--json"]) == 0  # the index is whole
    assert "kept" in capsys.readouterr().out
    second = _start(tmp_path, onnx_model, gallery)
    try:
        with second.client() as client:
            assert client.get("/info").json()["classes"] == len(os.listdir(tiny_dataset[1])) + 1
    finally:
        second.stop()


@pytest.mark.slow
def test_sigterm_answers_the_request_in_flight_and_exits_0(onnx_model, tiny_dataset, tmp_path):
    running = _start(tmp_path, onnx_model, _gallery_copy(tiny_dataset, tmp_path))
    good = _image_bytes(_images(tiny_dataset)[0])
    boundary = b"bound"
    body = b"".join(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"a.png\"\r\n"
                    b"Content-Type: image/png\r\n\r\n%s\r\n" % (boundary, name, good) for name in (b"image1", b"image2"))
    body += b"--%s--\r\n" % boundary
    head = (b"POST /verify HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nContent-Type: multipart/form-data; "
            b"boundary=%s\r\nContent-Length: %d\r\n\r\n" % (TOKEN.encode(), boundary, len(body)))
    with socket.create_connection(("127.0.0.1", running.port), timeout=60) as s:
        s.sendall(head + body[:100])  # in flight: half sent
        time.sleep(0.5)
        running.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        s.sendall(body[100:])
        answer = b""
        while not answer.endswith(b"}"):
            data = s.recv(65536)
            if not data:
                break
            answer += data
    assert b" 200 " in answer.split(b"\r\n")[0] and b"similarity" in answer
    assert running.process.wait(60) == 0
    running.log.close()
    assert "Traceback" not in running.output()


def _answer(sock):
    """All a server sends on this connection until it closes it."""
    answer = b""
    while data := sock.recv(65536):
        answer += data
    return answer


@pytest.mark.slow
def test_slow_clients_time_out_and_connections_beyond_the_limit_and_decodes_beyond_the_queue_are_refused(onnx_model, tiny_dataset, tmp_path):
    running = _start(tmp_path, onnx_model, _gallery_copy(tiny_dataset, tmp_path), "--request-timeout", "2",
                     "--max-connections", "12", "--decoders", "1", "--queue", "2")
    good = _image_bytes(_images(tiny_dataset)[0])
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    try:
        headers = socket.create_connection(("127.0.0.1", running.port), timeout=30)
        headers.sendall(b"POST /verify HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and no more
        body = socket.create_connection(("127.0.0.1", running.port), timeout=30)
        body.sendall(b"POST /verify HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"Content-Type: multipart/form-data; "
                     b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b")
        time.sleep(0.5)
        start = time.monotonic()
        beyond = [socket.create_connection(("127.0.0.1", running.port), timeout=30) for _ in range(12)]
        refused = [_answer(s) for s in beyond[10:]]  # two held: the limit of 12 reached
        assert all(b" 503 " in a.split(b"\r\n")[0] and b"--max-connections" in a for a in refused), refused
        assert time.monotonic() - start < 2
        for s in beyond:
            s.close()
        with running.client() as client:
            assert client.post("/verify", files={"image1": good, "image2": good}).status_code == 200
        for late in (headers, body):
            answer = _answer(late)  # closed by the server
            assert b" 408 " in answer.split(b"\r\n")[0] and b"--request-timeout" in answer, answer
            late.close()
        assert time.monotonic() - start < 10
        large = _png(6000, 6000)  # 36 MP, a small file: waiting for the one decoder counts in --queue 2
        with running.client() as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: client.post("/embed", files={"images": large}).status_code, range(8)))
        assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}, statuses
    finally:
        running.stop()
    assert "Traceback" not in running.output()


@pytest.mark.slow
def test_port_0_says_where_and_a_signal_while_loading_ends_in_one_line(onnx_model, tiny_dataset, tmp_path):
    command = [sys.executable, "-c", NO_TORCH, "-m", onnx_model, "--gallery", tiny_dataset[0], "--port", "0"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = process.stdout.readline()
    while line and not line.startswith("serving on"):
        line = process.stdout.readline()
    url = re.match(r"serving on (http://127\.0\.0\.1:[0-9]+) \(", line).group(1)
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    process.terminate()
    assert process.wait(60) == 0
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)  # importing, loading the model or embedding the gallery
        process.send_signal(sig)
        out, err = process.communicate(timeout=60)
        if "serving on" in out:  # it was up already: a normal stop
            assert process.returncode == 0
            continue
        assert process.returncode in (code, -sig), err  # -sig: before serve.py's own code ran
        assert "Traceback" not in err and "terminate called" not in err, err


# --- refusals at the start, in one line ------------------------------------------------------------

def test_a_bad_start_is_one_line(onnx_model, tiny_dataset, tmp_path, capsys):
    import serve

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    empty = tmp_path / "token"
    empty.write_text("\n")
    cases = [(["-m", str(tmp_path / "missing.onnx")], "does not exist"),
             (["-m", onnx_model, "--port", str(busy.getsockname()[1])], "cannot listen on"),
             (["-m", onnx_model, "--token-file", str(empty)], "holds no token"),
             (["-m", onnx_model, "--allow-enroll"], "give --gallery too"),
             (["-m", onnx_model, "--gallery", str(tmp_path / "nowhere")], "does not exist")]
    try:
        for argv, message in cases:
            assert serve.main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    finally:
        busy.close()


# --- the batcher and the checkpoint path, in this process ------------------------------------------

class _SlowScorer:
    """embed: the row sums as one feature, after waiting for `gate`; score: their difference."""

    def __init__(self, gate):
        self.gate, self.batches = gate, []

    def embed(self, images):
        self.gate.wait(10)
        self.batches.append(len(images))
        return images.reshape(len(images), -1).sum(axis=1, keepdims=True)

    def score_features(self, f1, f2):
        return (f1 - f2).reshape(-1)


def test_the_batcher_batches_waiting_jobs_and_refuses_when_full():
    import threading

    from siamese.batching import Batcher, QueueFull

    gate = threading.Event()
    scorer = _SlowScorer(gate)
    batcher = Batcher(lambda: scorer, max_batch=4, max_wait_ms=0, queue_size=3)
    batcher.start()
    try:
        jobs = [batcher.submit(np.full((1, 1, 1, 1), i, np.float32)) for i in range(1)]  # taken by the thread
        time.sleep(0.2)
        jobs += [batcher.submit(np.full((2, 1, 1, 1), i, np.float32), [(0, 1)]) for i in range(1, 4)]
        with pytest.raises(QueueFull):  # three wait, the fourth is refused at once
            batcher.submit(np.zeros((1, 1, 1, 1), np.float32))
        gate.set()
        results = [job.result(10) for job in jobs]
    finally:
        batcher.stop()
    assert scorer.batches == [1, 4, 2]  # the waiting jobs' six images went in batches of up to four
    for i, (features, similarities) in enumerate(results[1:], 1):
        assert features.tolist() == [[i], [i]] and similarities.tolist() == [0.0]
    with pytest.raises(QueueFull):  # stopped: refused
        batcher.submit(np.zeros((1, 1, 1, 1), np.float32))


def test_a_checkpoint_is_served_on_pytorch_with_the_answers_of_its_export(trained_checkpoint, onnx_model, tiny_dataset):
    import asyncio

    from siamese.served import NotAllowed, Served, ServeSettings

    a, b = (_image_bytes(p) for p in _images(tiny_dataset)[:2])
    answers = {}
    for name, model in (("torch", dict(checkpoint=trained_checkpoint, device="cpu")), ("onnx", dict(engine=onnx_model))):
        served = Served(ServeSettings(gallery=tiny_dataset[1], **model)).start()
        try:
            answers[name] = (asyncio.run(served.verify(a, b)), asyncio.run(served.identify(a, 3)), served.info())
            with pytest.raises(NotAllowed):  # 403: started without --allow-enroll
                asyncio.run(served.enroll("new", [a]))
        finally:
            served.stop()
    (verified, identified, info), (onnx_verified, onnx_identified, _) = answers["torch"], answers["onnx"]
    assert info["runtime"] == "torch" and info["model"] == "best.pth"
    assert verified["similarity"] == pytest.approx(onnx_verified["similarity"], abs=1e-5)
    assert [m["class"] for m in identified["matches"]] == [m["class"] for m in onnx_identified["matches"]]
