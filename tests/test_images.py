"""Target photographs: names, files, directories, conversions and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from repinv.errors import RepinvError
from repinv.inputs.images import EMBEDDED, load_images


def test_embedded_name_gives_rgb_at_model_size():
    [img] = load_images("chelsea", 224)
    assert img.name == "chelsea" and img.pixels.shape == (3, 224, 224)
    assert 0 <= img.pixels.min() and img.pixels.max() <= 1 and img.pixels.std() > 0.1


def test_list_file_and_directory(tmp_path):
    arr = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr).save(tmp_path / "b.jpg")
    imgs = load_images([str(tmp_path / "a.png"), "astronaut", str(tmp_path)], 32)
    assert [i.name for i in imgs] == ["a", "astronaut", "a_2", "b"]
    assert all(i.pixels.shape == (3, 32, 32) for i in imgs)
    assert torch.allclose(imgs[0].pixels, imgs[2].pixels), "a file and the same file found in its folder"


def test_the_shorter_side_is_resized_and_the_centre_kept():
    """A 40x120 image whose middle third is white, the rest black: resized to 32x96, its centre 32x32 is the white
    third (a crop from the corner would be black)."""
    from repinv.inputs.images import resize_center_crop

    arr = np.zeros((40, 120, 3), np.uint8)
    arr[:, 40:80] = 255
    crop = resize_center_crop(arr, (32, 32))
    assert crop.shape == (3, 32, 32) and float(crop[:, :, 2:30].min()) > 0.99 and float(crop.mean()) > 0.9


def test_images_whose_file_names_would_be_one_get_names_of_their_own(tmp_path):
    """`my cat` and `my-cat` share a file name (`my-cat.png`); `b/cat.png` after `a/cat.png` becomes `cat_2`, which
    `b/cat_2.png` then must not take again: each image keeps a target and reconstruction file of its own."""
    from repinv.naming import slug

    arr = (np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)
    for rel in ("s/my cat.png", "s/my-cat.png", "a/cat.png", "b/cat.png", "b/cat_2.png", "c/Cat.png"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        Image.fromarray(arr).save(tmp_path / rel)
    names = [i.name for i in load_images([str(tmp_path / d) for d in "sabc"], 16)]
    assert len(names) == 6 and len({slug(n).casefold() for n in names}) == 6, \
        f"{names}: on a case-insensitive file system Cat.png is cat.png"


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_non_rgb_modes_are_converted_with_a_warning(tmp_path, mode, caplog):
    arr = (np.random.default_rng(1).random((20, 20)) * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    if mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("P")
    elif mode == "I;16":
        img = Image.fromarray(arr.astype(np.uint16) * 256)
    img.save(tmp_path / "x.png")
    [loaded] = load_images(str(tmp_path / "x.png"), 16)
    assert loaded.pixels.shape == (3, 16, 16) and loaded.pixels.max() > 0.5
    assert "converted to RGB" in caplog.text


def test_a_16_bit_image_keeps_its_brightness(tmp_path):
    """A 16-bit photograph is as bright as its 8-bit copy: 0..65535 is its scale, not its own brightest pixel."""
    arr = np.full((20, 20), 0.25)
    arr[:, 10:] = 0.125
    Image.fromarray((arr * 65535).round().astype(np.uint16)).save(tmp_path / "deep.png")
    [loaded] = load_images(str(tmp_path / "deep.png"), 20)
    assert torch.allclose(loaded.pixels[0], torch.from_numpy(arr).float(), atol=1 / 255)


def test_a_float_image_in_zero_to_one_keeps_its_brightness(tmp_path, caplog):
    """A float TIFF holds intensities in [0, 1]: read as 0..255 it would load almost black."""
    arr = np.random.default_rng(2).random((20, 20)).astype(np.float32)
    Image.fromarray(arr, mode="F").save(tmp_path / "x.tif")
    [loaded] = load_images(str(tmp_path / "x.tif"), 20)
    assert torch.allclose(loaded.pixels[0], torch.from_numpy(arr), atol=1 / 255)
    assert "float image" in caplog.text


def test_a_photo_stored_on_its_side_loads_upright(tmp_path):
    """A camera's portrait photo is stored landscape with EXIF orientation 6 (turn 90 degrees clockwise to view)."""
    upright = np.zeros((40, 20, 3), np.uint8)
    upright[:10] = 255  # white top
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # on its side, as the camera writes it
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "portrait.png", exif=exif)
    [loaded] = load_images(str(tmp_path / "portrait.png"), (40, 20))
    assert loaded.pixels[:, :8].min() > 0.9 and loaded.pixels[:, 12:].max() < 0.1, "white on top, as seen"


@pytest.mark.parametrize("bad,needle", [
    ("chelsey", "Did you mean 'chelsea'"),
    ("/no/such/file.png", "neither an embedded photograph nor an existing file"),
])
def test_unknown_names_and_paths_are_clear_errors(bad, needle):
    with pytest.raises(RepinvError, match=needle):
        load_images(bad, 32)


def test_empty_directory_and_broken_file(tmp_path):
    with pytest.raises(RepinvError, match="no images in it"):
        load_images(str(tmp_path), 32)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(RepinvError, match="could not be read as an image"):
        load_images(str(tmp_path / "broken.jpg"), 32)


def test_an_image_larger_than_pillow_reads_is_a_clear_error(tmp_path, monkeypatch):
    """Pillow refuses a decompression bomb (above 179 megapixels by default, as a microscopy TIFF may be)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(RepinvError, match="is larger than Pillow reads by default .* Downscale it first"):
        load_images(str(tmp_path / "big.png"), 16)


def test_a_folder_named_as_an_embedded_photograph_is_not_taken_for_it(tmp_path, monkeypatch):
    """`image=cat` with a folder ./cat would invert scikit-image's cat instead of the folder's images: refused, naming
    both and how to say which."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "cat" / "mine.png")
    with pytest.raises(RepinvError, match=r"image=cat names both an embedded photograph and the folder .* image=\./cat"):
        load_images("cat", 16)
    assert [i.name for i in load_images("./cat", 16)] == ["mine"]


def test_a_number_is_one_name(tmp_path, monkeypatch):
    """`image=2024` reaches the loader as an int: it names the folder 2024, as it would spelled as a string."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "2024").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "2024" / "a.png")
    assert [i.name for i in load_images(2024, 16)] == ["a"]


@pytest.mark.parametrize("name", EMBEDDED)
def test_every_embedded_photograph_loads_offline(name):
    [img] = load_images(name, 16)
    assert img.name == name and img.pixels.shape == (3, 16, 16)


def test_an_embedded_photograph_that_does_not_load_is_a_clear_error(monkeypatch):
    from skimage import data

    def missing():
        raise ModuleNotFoundError("the file requires pooch")

    monkeypatch.setattr(data, "chelsea", missing)
    with pytest.raises(RepinvError, match=r"image=chelsea: the embedded photograph could not be loaded .*requires pooch"):
        load_images("chelsea", 16)
