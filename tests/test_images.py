import os
import pickle

import numpy as np
import pytest
from PIL import Image

from siamese.errors import UserError
from siamese.images import Preprocessing, load_image, scan_folder


def test_scan_reads_every_pillow_format_sorted_and_skips_the_rest(tmp_path):
    for cls in ("b", "a"):
        (tmp_path / cls).mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "z.PNG")
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "y.jpeg")
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.bmp", format="BMP")
    Image.new("RGB", (4, 4)).save(tmp_path / "b" / "w.TIF", format="TIFF")
    Image.new("RGB", (4, 4)).save(tmp_path / "b" / ".hidden.png")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    (tmp_path / ".git").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / ".git" / "c.png")
    folder = scan_folder(str(tmp_path))
    assert folder.classes == ["a", "b"]
    assert [os.path.basename(p) for p in folder.paths] == ["x.bmp", "y.jpeg", "z.PNG", "w.TIF"]
    assert folder.labels == [0, 0, 0, 1]


@pytest.mark.parametrize("make, expected", [
    (lambda: Image.new("L", (3, 3), 100), (100, 100, 100)),
    (lambda: Image.new("1", (3, 3), 1), (255, 255, 255)),
    (lambda: Image.fromarray(np.full((3, 3), 65535, np.uint16)), (255, 255, 255)),  # 16-bit grey
    (lambda: Image.fromarray(np.full((3, 3), 257 * 40, np.uint16)), (40, 40, 40)),
    (lambda: Image.new("RGBA", (3, 3), (10, 20, 30, 0)), (255, 255, 255)),  # transparent -> white
    (lambda: Image.new("RGBA", (3, 3), (10, 20, 30, 255)), (10, 20, 30)),
    (lambda: Image.new("LA", (3, 3), (50, 255)), (50, 50, 50)),
    (lambda: Image.new("RGB", (3, 3), (1, 2, 3)).convert("P", palette=Image.ADAPTIVE), (1, 2, 3)),
    (lambda: Image.new("CMYK", (3, 3), (0, 0, 0, 0)), (255, 255, 255)),
])
def test_every_mode_becomes_the_same_rgb(tmp_path, make, expected):
    img = make()
    path = tmp_path / ("x.tif" if img.mode == "CMYK" else "x.png")
    img.save(path)
    rgb = load_image(str(path))
    assert rgb.mode == "RGB"
    assert rgb.getpixel((1, 1)) == expected


def test_preprocessing_resizes_then_normalises():
    prep = Preprocessing(image_size=8)
    array = prep(Image.new("RGB", (20, 10), (255, 0, 128)))
    assert array.shape == (3, 8, 8) and array.dtype == np.float32
    expected = (np.array([1.0, 0.0, 128 / 255]) - np.array(prep.mean)) / np.array(prep.std)
    np.testing.assert_allclose(array[:, 4, 4], expected, rtol=1e-6)



def test_normalize_gives_every_level_of_every_channel_its_formula_value():
    prep = Preprocessing(image_size=16, mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4))
    rng = np.random.default_rng(0)
    pixels = rng.permutation(np.stack([np.arange(256, dtype=np.uint8)] * 3, axis=1)).reshape(16, 16, 3)
    array = prep.normalize(Image.fromarray(pixels, "RGB"))
    x = pixels.astype(np.float32) * np.float32(1.0 / 255.0)
    expected = (x - np.float32([0.1, 0.5, 0.9])) / np.float32([0.2, 0.3, 0.4])
    assert np.array_equal(array, expected.transpose(2, 0, 1))  # exactly, not merely close
    assert pickle.loads(pickle.dumps(prep)) == prep  # loader processes receive it pickled

def _two_classes(tmp_path, counts=(2, 1)):
    for c, n in enumerate(counts):
        (tmp_path / f"c{c}").mkdir()
        for i in range(n):
            Image.new("RGB", (4, 4), (c * 50, i, 0)).save(tmp_path / f"c{c}" / f"{i}.png")
    return tmp_path


def test_bad_folders_say_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_folder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        scan_folder(str(tmp_path / "empty"))
    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(one / "a.png")
    Image.new("RGB", (4, 4)).save(one / "b.png")
    with pytest.raises(UserError, match="only one class"):
        scan_folder(str(tmp_path / "one"))
    single = _two_classes(tmp_path / "single", (1, 1)) if (tmp_path / "single").mkdir() is None else None
    with pytest.raises(UserError, match="no class .* has two images"):
        scan_folder(str(single))


def test_corrupt_image_is_named(tmp_path):
    root = _two_classes(tmp_path)
    bad = tmp_path / "c1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(UserError, match="broken.png"):
        scan_folder(str(root))


def test_truncated_image_is_named_when_loaded(tmp_path):
    path = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(UserError, match="t.png"):
        load_image(str(path))


def test_huge_image_is_refused_clearly(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (200, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 200x200 is then over twice the limit
    with pytest.raises(UserError, match="too large"):
        load_image(str(path))
