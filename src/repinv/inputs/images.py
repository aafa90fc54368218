"""Target photographs: embedded scikit-image photographs, files, directories or lists of these."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from repinv.errors import RepinvError, listing, suggest
from repinv.naming import slug

log = logging.getLogger(__name__)

# scikit-image's bundled colour or grey photographs (not its synthetic test patterns), those its installation holds:
# the ones it would download (skin) are left out, so a run needs no network.
EMBEDDED = (
    "astronaut", "brick", "camera", "cat", "chelsea", "coffee", "coins", "grass",
    "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "motorcycle_left",
    "page", "retina", "rocket",
)
# Embedded photographs that skimage.data returns as part of a set, not by a function of their own name.
IN_SETS = {"motorcycle_left": lambda data: data.stereo_motorcycle()[0]}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


class ImageUpscaled(UserWarning):
    """An image smaller than the model's input, enlarged to it: the model sees interpolated detail."""

    def __init__(self, name: str, shape: tuple[int, int], size: tuple[int, int], factor: float):
        self.name, self.shape, self.size, self.factor = name, tuple(shape), tuple(size), float(factor)
        super().__init__(
            f"image {name} is {shape[0]}x{shape[1]}; upscaled {factor:.1f}x to {size[0]}x{size[1]} (height x width) "
            "for the model's input, so its fine detail is interpolated: use a photograph at least that large"
        )


@dataclass(frozen=True)
class TargetImage:
    """A named photograph as a float tensor [3, H, W] in [0, 1]."""

    name: str
    pixels: torch.Tensor


def _embedded(name: str) -> np.ndarray:
    """An embedded photograph as scikit-image gives it; any failure to load it is a RepinvError."""
    from skimage import data

    try:
        return IN_SETS.get(name, lambda d: getattr(d, name)())(data)
    except Exception as err:
        raise RepinvError(
            f"image={name}: the embedded photograph could not be loaded from scikit-image ({type(err).__name__}: "
            f"{' '.join(str(err).split())}). Check that scikit-image is installed whole, or give the path of an image file."
        ) from None


def _to_rgb(img: Image.Image, source: str) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, warning when information is dropped or invented."""
    if img.mode == "RGB":
        return img
    if img.mode == "F":  # 32-bit float: [0, 1] intensities as written by most tools, else scaled by its maximum
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        hi = arr.max() if arr.max() > 1 else 1.0
        img = Image.fromarray((arr.clip(0, None) / hi * 255).round().astype(np.uint8))
        log.warning("%s: float image (maximum %.3g) scaled to 8 bits and converted to RGB", source, hi)
    elif img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (or 32-bit integer) intensities of 0..65535
        arr = np.asarray(img, dtype=np.float64).clip(0, None)
        hi = max(arr.max(), 65535.0)
        img = Image.fromarray((arr / hi * 255).round().astype(np.uint8))
        log.warning("%s: 16-bit image scaled to 8 bits and converted to RGB", source)
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        log.warning("%s: %s image composited on white and converted to RGB", source, img.mode)
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    else:
        log.warning("%s: %s image converted to RGB", source, img.mode)
    return img.convert("RGB")


def _read_file(path: Path) -> np.ndarray:
    """The file as 8-bit RGB, turned upright as its EXIF orientation says (a camera's portrait photo is stored on
    its side)."""
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(_to_rgb(ImageOps.exif_transpose(img), str(path)))
    except Image.DecompressionBombError as err:
        raise RepinvError(
            f"image={path} is larger than Pillow reads by default ({err}). Downscale it first (the run resizes every "
            "image to the model's input size anyway), or raise PIL.Image.MAX_IMAGE_PIXELS where you trust the file."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise RepinvError(
            f"image={path} could not be read as an image ({err}). Pass a readable PNG, JPEG, "
            "TIFF or BMP file, a directory of them, or an embedded photograph name such as 'chelsea'."
        ) from None


def _expand(entry: str) -> list[tuple[str, np.ndarray]]:
    files = locate(entry)
    if files is None:
        arr = _embedded(entry)
        if arr.ndim == 2:
            log.warning("embedded image %s is grayscale: repeated to RGB", entry)
            arr = np.repeat(arr[..., None], 3, axis=-1)
        return [(entry, arr[..., :3])]
    return [(p.stem, _read_file(p)) for p in files]


def resolved(entries: Sequence[str]) -> list[str]:
    """Each image entry as a run names it: an embedded photograph by its name, a file or folder by its absolute path,
    so that a run names the photograph it inverts wherever the command is run from."""
    return [e if e in EMBEDDED else str(Path(e).expanduser().resolve()) for e in entries]


def locate(entry: str) -> list[Path] | None:
    """The image files one `image=` entry names (None: an embedded photograph), without reading them;
    a RepinvError when there are none."""
    path = Path(entry).expanduser()
    if entry in EMBEDDED:
        if path.exists():
            raise RepinvError(
                f"image={entry} names both an embedded photograph and the {'folder' if path.is_dir() else 'file'} "
                f"{path.resolve()}. Say which: image=./{entry} (or its absolute path) for yours, or rename it; "
                f"the embedded {entry} is meant where no such file or folder is in the current folder.")
        return None
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise RepinvError(
                f"image={entry} is a directory with no images in it (looked for "
                f"{', '.join(sorted(IMAGE_SUFFIXES))}). Point image= at a directory holding "
                "image files, at one file, or at an embedded photograph such as 'chelsea'."
            )
        return files
    if path.is_file():
        return [path]
    raise RepinvError(
        f"image={entry} is neither an embedded photograph nor an existing file or directory."
        f"{suggest(entry, EMBEDDED)} Embedded photographs: {listing(EMBEDDED)}; otherwise give "
        "the path of an image file or of a directory of images (absolute, or relative to where "
        "you ran the command)."
    )


def upscale_factor(shape: tuple[int, int], size: tuple[int, int]) -> float:
    """How much `resize_center_crop` enlarges an image of `shape` (H, W) for `size` (> 1: upscaled)."""
    return max(size[0] / shape[0], size[1] / shape[1])


def resize_center_crop(arr: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 HxWx3 -> float [3, H, W] in [0, 1]: shorter side to size, then a centre crop."""
    x = torch.from_numpy(np.array(arr)).permute(2, 0, 1).float().div(255)
    h, w = x.shape[-2:]
    scale = upscale_factor((h, w), size)
    nh, nw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
    return x[:, top : top + size[0], left : left + size[1]].clamp(0, 1).contiguous()


def load_images(spec: str | list | tuple, size: int | tuple[int, int]) -> list[TargetImage]:
    """Resolve `image=` (a name, path, directory or list of these) to RGB tensors at `size`. A scalar is one name
    (`image=2024` arrives as an int): a folder or file may be called that."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    many = isinstance(spec, Sequence) and not isinstance(spec, str)
    entries = list(spec) if many else [] if spec is None else [spec]
    if not entries or not all(str(entry).strip() for entry in entries):  # "" is the current folder
        raise RepinvError(
            f"image={spec if many else ''} is empty or names an empty entry. Give an embedded photograph such as "
            "'chelsea', a file, a directory, or a list such as image=[chelsea,astronaut]."
        )
    out: list[TargetImage] = []
    taken: set[str] = set()
    for entry in entries:
        for name, arr in _expand(str(entry)):
            unique = _unused(name, taken)
            factor = upscale_factor(arr.shape[:2], size)
            if factor > 1:
                warnings.warn(ImageUpscaled(unique, arr.shape[:2], size, factor), stacklevel=2)
            out.append(TargetImage(unique, resize_center_crop(arr, size)))
    return out


def _unused(name: str, taken: set[str]) -> str:
    """`name`, or `name_2`, `name_3`, ... : the first whose file name (its slug, case folded: `my cat`, `my-cat` and,
    on a case-insensitive file system, `My-Cat` are one) no earlier image has, so no image's target and reconstruction
    files overwrite another's. Adds it to `taken`."""
    unique, k = name, 1
    while slug(unique).casefold() in taken:
        k += 1
        unique = f"{name}_{k}"
    taken.add(slug(unique).casefold())
    return unique
