"""The service's page in a real browser: Debian's chromium, headless, driven by Selenium, against a
real serve.py process. The page asks for the server's token, verifies two uploaded images,
identifies one against the gallery with its thumbnails, and shows the server's errors in one
line; what it shows equals the service's own JSON answers for the same files. Skipped where
chromium or chromedriver is not installed (`.ci/run` installs them)."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TOKEN = "page-test-token"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
                              "apt-get install chromium chromium-driver"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (requirements-dev.txt)")
httpx = pytest.importorskip("httpx")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve.py exited with {process.returncode}:\n{process.stderr.read()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"serve.py was not ready within {timeout} s")


@pytest.fixture(scope="module")
def server(onnx_model, tiny_dataset, tmp_path_factory):
    """A real serve.py on a free port, with a gallery of its own, enrollment and a token."""
    base = tmp_path_factory.mktemp("served")
    gallery = str(base / "gallery")
    shutil.copytree(tiny_dataset[1], gallery)
    token_file = base / "token"
    token_file.write_text(TOKEN + "\n")
    url = f"http://127.0.0.1:{_free_port()}"
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "serve.py"), "-m", onnx_model, "--gallery", gallery,
         "--port", url.rsplit(":", 1)[1], "--token-file", str(token_file), "--allow-enroll"],
        cwd=str(base), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        _wait_ready(url, process)
        yield url, gallery
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless chromium with a fresh profile and everything that would reach the internet off."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1000,1400",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout=30):
    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def _text(driver, element_id):
    return driver.find_element(By.ID, element_id).text


def _open(driver, url):
    """Load the page; give the token when it asks (it keeps it for the tab's session)."""
    driver.get(url + "/")
    _wait(driver, lambda d: d.find_element(By.ID, "verify-section").is_displayed()
          or d.find_element(By.ID, "token-section").is_displayed())
    if driver.find_element(By.ID, "token-section").is_displayed():
        driver.find_element(By.ID, "token").send_keys(TOKEN + "\n")
        _wait(driver, lambda d: d.find_element(By.ID, "verify-section").is_displayed())


def _post(url, path, files, data=None):
    answer = httpx.post(url + path, files=files, data=data or {}, headers=HEADERS, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _image(gallery, cls, index):
    return os.path.join(gallery, cls, f"img_{index:02d}.png")


def _upload(driver, fields, button, result):
    """Choose the files, press the button and wait for the answer: the result or the error line
    (the page hides the earlier result and disables the button while it asks)."""
    for field, path in fields.items():
        element = driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(path)
    driver.find_element(By.ID, button).click()
    _wait(driver, lambda d: d.find_element(By.ID, button).is_enabled()
          and (d.find_element(By.ID, result).is_displayed() or d.find_element(By.ID, "error").text))


def test_the_page_asks_for_the_token_and_shows_the_model(server, browser):
    url, _ = server
    assert httpx.get(url + "/info", timeout=10).status_code == 401
    info = httpx.get(url + "/info", headers=HEADERS, timeout=10).json()
    browser.get(url + "/")
    _wait(browser, lambda d: d.find_element(By.ID, "token-section").is_displayed())
    assert not browser.find_element(By.ID, "verify-section").is_displayed()
    browser.find_element(By.ID, "token").send_keys("not-the-token\n")
    _wait(browser, lambda d: d.find_element(By.ID, "error").text)
    assert not browser.find_element(By.ID, "verify-section").is_displayed()
    _open(browser, url)
    assert info["model"] in _text(browser, "info") and _text(browser, "error") == ""
    assert browser.find_element(By.ID, "identify-section").is_displayed() == info["gallery"]


def test_verify_shows_the_services_answer(server, browser, tmp_path):
    url, gallery = server
    _open(browser, url)
    for first, second in [(("class_0", 0), ("class_0", 1)), (("class_0", 0), ("class_1", 0))]:
        files = {"image1": _image(gallery, *first), "image2": _image(gallery, *second)}
        _upload(browser, files, "verify-button", "verify-result")
        with open(files["image1"], "rb") as f1, open(files["image2"], "rb") as f2:
            expected = _post(url, "/verify", {"image1": f1, "image2": f2})
        shown = browser.find_element(By.ID, "verify-similarity")
        assert float(shown.get_attribute("data-value")) == pytest.approx(expected["similarity"], abs=1e-6)
        assert shown.text == f"{expected['similarity']:.4f}"
        assert _text(browser, "verify-verdict") == ("same" if expected["same"] else "different")
        assert _text(browser, "verify-threshold") == f"{expected['threshold']:.4f} ({expected['threshold_source']})"
        assert _text(browser, "error") == ""
    # a threshold given on the page is the one used
    box = browser.find_element(By.ID, "verify-threshold-input")
    box.send_keys("0.25")
    _upload(browser, files, "verify-button", "verify-result")
    assert _text(browser, "verify-threshold").startswith("0.2500 (")
    box.clear()
    _screenshot(browser, tmp_path / "verify.png")


def test_identify_shows_the_top_matches_with_their_thumbnails(server, browser, tmp_path):
    url, gallery = server
    _open(browser, url)
    query = _image(gallery, "class_1", 2)
    _upload(browser, {"image": query}, "identify-button", "identify-result")
    with open(query, "rb") as f:
        expected = _post(url, "/identify", {"image": f})
    rows = browser.find_elements(By.CSS_SELECTOR, "#identify-results tr")
    assert len(rows) == len(expected["matches"]) > 0
    for row, match in zip(rows, expected["matches"]):
        cells = row.find_elements(By.TAG_NAME, "td")
        assert [cells[0].text, cells[2].text, cells[3].text] == [
            str(match["rank"]), match["class"], f"{match['similarity']:.4f}"]
        assert cells[1].find_element(By.TAG_NAME, "img").get_attribute("data-src") == match["thumbnail"]
    verdict = browser.find_element(By.ID, "identify-verdict")
    assert verdict.get_attribute("data-value") == expected["verdict"]
    if expected["tie"]:
        assert verdict.text.startswith("tie between ")
    else:
        assert verdict.text == expected["verdict"]
    assert _text(browser, "identify-threshold") == f"{expected['threshold']:.4f} ({expected['threshold_source']})"
    _wait(browser, lambda d: d.execute_script(
        "const images = [...document.querySelectorAll('#identify-results img')];"
        "return images.length > 0 && images.every((i) => i.complete && i.naturalWidth > 0);"))
    _screenshot(browser, tmp_path / "identify.png")


def test_a_refused_upload_is_one_line_on_the_page(server, browser, tmp_path):
    url, gallery = server
    _open(browser, url)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is not an image\n")
    with open(not_an_image, "rb") as f1, open(_image(gallery, "class_0", 0), "rb") as f2:
        answer = httpx.post(url + "/verify", files={"image1": f1, "image2": f2}, headers=HEADERS, timeout=30)
    assert 400 <= answer.status_code < 500 and set(answer.json()) >= {"error"}
    files = {"image1": str(not_an_image), "image2": _image(gallery, "class_0", 0)}
    _upload(browser, files, "verify-button", "verify-result")
    assert _text(browser, "error") == answer.json()["error"].splitlines()[0]


def test_enroll_adds_a_class_to_the_gallery(server, browser):
    url, gallery = server
    _open(browser, url)
    classes = httpx.get(url + "/info", headers=HEADERS, timeout=10).json()["classes"]
    images = [_image(gallery, "class_2", i) for i in (0, 1)]
    browser.find_element(By.ID, "enroll-class").send_keys("newcomer")
    _upload(browser, {"enroll-images": "\n".join(images)}, "enroll-button", "enroll-result")
    assert _text(browser, "error") == ""
    assert "Added 2 image(s) to newcomer" in _text(browser, "enroll-result")
    _wait(browser, lambda d: f"{classes + 1} classes" in d.find_element(By.ID, "info").text)


def _screenshot(driver, path):
    assert driver.save_screenshot(str(path))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000
