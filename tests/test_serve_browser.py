"""The service's page in a real browser: Debian's chromium, headless, driven by Selenium, against a
real serve.py process. The page asks for the server's token, verifies two uploaded images,
identifies one against the gallery with its thumbnails, and shows the server's errors in one
line; what it shows equals the service's own JSON answers for the same files. Skipped where
chromium or chromedriver is not installed (`.ci/run` installs them)."""

import os

import pytest

from test_serve import TOKEN, server  # noqa: F401  the service's tests' server: a gallery, enrollment, a token

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
                              "apt-get install chromium chromium-driver"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (requirements-dev.txt)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


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
    return WebDriverWait(driver, timeout).until(condition)


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


def _files(**paths):
    files = {}
    for field, path in paths.items():
        with open(path, "rb") as f:
            files[field] = f.read()
    return files


def _image(gallery, cls, index):
    return os.path.join(gallery, cls, f"img_{index:02d}.png")


def _note_chunk():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("note", "saved again")
    return info


def _threshold_text(answer):
    return f"{answer['threshold']:.4f} ({answer['threshold_source']})"


def _screenshot(driver, path):
    assert driver.save_screenshot(str(path))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000


def test_the_page_asks_for_the_token_and_shows_the_model(server, browser):
    with server.client(token=None) as client:
        assert client.get("/info").status_code == 401
    with server.client() as client:
        info = client.get("/info").json()
    browser.get(server.url + "/")
    _wait(browser, lambda d: d.find_element(By.ID, "token-section").is_displayed())
    assert not browser.find_element(By.ID, "verify-section").is_displayed()
    browser.find_element(By.ID, "token").send_keys("not-the-token\n")
    _wait(browser, lambda d: d.find_element(By.ID, "error").text)
    assert not browser.find_element(By.ID, "verify-section").is_displayed()
    _open(browser, server.url)
    assert info["model"] in _text(browser, "info") and _text(browser, "error") == ""
    assert browser.find_element(By.ID, "identify-section").is_displayed() == info["gallery"]


def test_verify_shows_the_services_answer(server, browser, tmp_path):
    _open(browser, server.url)
    with server.client() as client:
        for first, second in [(("class_0", 0), ("class_0", 1)), (("class_0", 0), ("class_1", 0))]:
            paths = {"image1": _image(server.gallery, *first), "image2": _image(server.gallery, *second)}
            _upload(browser, paths, "verify-button", "verify-result")
            expected = client.post("/verify", files=_files(**paths)).json()
            shown = browser.find_element(By.ID, "verify-similarity")
            assert float(shown.get_attribute("data-value")) == pytest.approx(expected["similarity"], abs=1e-6)
            assert shown.text == f"{expected['similarity']:.4f}"
            assert _text(browser, "verify-verdict") == ("same" if expected["same"] else "different")
            assert _text(browser, "verify-threshold") == _threshold_text(expected)
            assert _text(browser, "error") == ""
    # a threshold given on the page is the one used
    box = browser.find_element(By.ID, "verify-threshold-input")
    box.send_keys("0.25")
    _upload(browser, paths, "verify-button", "verify-result")
    assert _text(browser, "verify-threshold") == "0.2500 (request)"
    box.clear()
    _screenshot(browser, tmp_path / "verify.png")


def test_identify_shows_the_top_matches_with_their_thumbnails(server, browser, tmp_path):
    _open(browser, server.url)
    query = _image(server.gallery, "class_1", 2)
    _upload(browser, {"image": query}, "identify-button", "identify-result")
    with server.client() as client:
        expected = client.post("/identify", files=_files(image=query)).json()
    rows = browser.find_elements(By.CSS_SELECTOR, "#identify-results tr")
    assert len(rows) == len(expected["matches"]) > 0
    for row, match in zip(rows, expected["matches"]):
        cells = row.find_elements(By.TAG_NAME, "td")
        assert [cells[0].text, cells[2].text, cells[3].text] == [
            str(match["rank"]), match["class"], f"{match['similarity']:.4f}"]
        assert cells[1].find_element(By.TAG_NAME, "img").get_attribute("data-src") == match["thumbnail"]  # or both none
    verdict = browser.find_element(By.ID, "identify-verdict")
    assert verdict.get_attribute("data-value") == expected["verdict"]
    assert verdict.text.startswith("tie between ") if expected["tie"] else verdict.text == expected["verdict"]
    assert _text(browser, "identify-threshold") == _threshold_text(expected)
    _wait(browser, lambda d: d.execute_script(
        "const images = [...document.querySelectorAll('#identify-results img[data-src]')];"
        "return images.length > 0 && images.every((i) => i.complete && i.naturalWidth > 0);"))
    _screenshot(browser, tmp_path / "identify.png")


def test_a_refused_upload_is_one_line_on_the_page(server, browser, tmp_path):
    _open(browser, server.url)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is not an image\n")
    paths = {"image1": str(not_an_image), "image2": _image(server.gallery, "class_0", 0)}
    with server.client() as client:
        answer = client.post("/verify", files=_files(**paths))
    assert 400 <= answer.status_code < 500 and set(answer.json()) == {"error"}
    _upload(browser, paths, "verify-button", "verify-result")
    assert _text(browser, "error") == answer.json()["error"]
    assert not browser.find_element(By.ID, "verify-result").is_displayed()


def test_enroll_adds_a_class_to_the_gallery(server, browser, tiny_dataset):
    _open(browser, server.url)
    with server.client() as client:
        classes = client.get("/info").json()["classes"]
    images = [_image(tiny_dataset[0], "class_3", i) for i in (0, 1)]  # not in the gallery: a copy would be refused
    browser.find_element(By.ID, "enroll-class").send_keys("newcomer")
    _upload(browser, {"enroll-images": "\n".join(images)}, "enroll-button", "enroll-result")
    assert _text(browser, "error") == ""
    assert _text(browser, "enroll-result").startswith("Added 2 image(s) to newcomer")
    _wait(browser, lambda d: f"{classes + 1} classes" in d.find_element(By.ID, "info").text)


def test_a_tie_names_the_tied_classes(server, browser, tmp_path):
    """The pixels of the best match enrolled under another class (saved again: other bytes, since
    a byte-identical copy is refused) tie with it exactly."""
    from PIL import Image

    _open(browser, server.url)
    query = _image(server.gallery, "class_0", 3)
    with server.client() as client:
        best = client.post("/identify", files=_files(image=query)).json()["matches"][0]
        with Image.open(os.path.join(server.gallery, best["gallery_image"])) as image:
            image.save(tmp_path / "twin.png", pnginfo=_note_chunk())
        copy = _files(images=str(tmp_path / "twin.png"))
        assert client.post("/enroll", data={"class": "twin"}, files=copy).status_code == 200
        expected = client.post("/identify", files=_files(image=query)).json()
    assert expected["tie"] and expected["verdict"] == "tie"
    _upload(browser, {"image": query}, "identify-button", "identify-result")
    shown = _text(browser, "identify-verdict")
    assert shown.startswith("tie between ") and set(shown[len("tie between "):].split(", ")) == {best["class"], "twin"}
