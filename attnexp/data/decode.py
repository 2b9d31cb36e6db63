"""Decoding one image file to an RGB uint8 tensor (3, H, W), and resizing it.

Decoder choice, measured here with ``scripts/bench_data.py --decode`` on one CPU thread
(2-core shared machine, other jobs running; see docs/data.md for the full table):

=============================================  ================  ===========
images                                          torchvision.io    PIL
=============================================  ================  ===========
CIFAR-10 JPEGs, 32x32 (2,000 real files)        ~10,000 img/s     ~5,000 img/s
the same re-encoded at 500x375, quality 90      ~1,200 img/s      ~900 img/s
=============================================  ================  ===========

So JPEG, PNG, WebP and GIF go through ``torchvision.io.decode_image`` (about 2x faster on
small files, where PIL's per-file Python overhead dominates, 1.3x on ImageNet-sized ones);
other formats (BMP, TIFF, ...) and anything torchvision rejects are retried with PIL, and
only a file that both refuse is reported as corrupt.

Colour conversion follows torchvision's ``ImageFolder`` loader (``PIL.Image.convert("RGB")``)
so that numbers compare with code that uses it: grayscale is replicated to three channels,
palette images are expanded, CMYK is converted, and an alpha channel is dropped (not
composited). 16-bit images are scaled to 8 bits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

#: Extensions torchvision decodes natively; others go straight to PIL.
TORCHVISION_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class CorruptImageError(Exception):
    """A file that neither torchvision nor PIL can decode (truncated, not an image, ...)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"cannot decode image {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _to_uint8_rgb(img: torch.Tensor) -> torch.Tensor:
    if img.dtype != torch.uint8:  # 16-bit PNGs
        img = TF.to_dtype(img, torch.uint8, scale=True)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img[:3].contiguous()


def _decode_pil(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # convert("RGB") would clip 16-bit values
            arr = np.asarray(im, dtype=np.float32)
            scale = 255.0 / 65535.0 if arr.max() > 255 else 1.0
            im = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8))
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def decode_rgb(path: Path | str) -> torch.Tensor:
    """Decode ``path`` to a uint8 (3, H, W) RGB tensor, or raise :class:`CorruptImageError`."""
    path = Path(path)
    first_error = ""
    if path.suffix.lower() in TORCHVISION_EXTENSIONS:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise CorruptImageError(path, f"cannot read file ({err})") from err
        if not data:
            raise CorruptImageError(path, "empty file")
        try:
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return _to_uint8_rgb(decode_image(raw, mode=ImageReadMode.RGB))
        except (RuntimeError, ValueError) as err:
            lines = str(err).strip().splitlines()
            first_error = lines[-1] if lines else type(err).__name__
    try:
        return _decode_pil(path)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = f"{err}" + (f" (torchvision: {first_error})" if first_error else "")
        raise CorruptImageError(path, reason) from err


def resize_center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (antialiased bilinear), then crop the centre square.

    A no-op for images already ``size`` x ``size`` (CIFAR stored as files).
    """
    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img
    if min(h, w) != size:
        img = TF.resize(img, size, antialias=True)
    return TF.center_crop(img, [size, size])
