"""Decoding one image file to an RGB uint8 tensor (3, H, W), and resizing it.

Decoder choice, measured with ``scripts/bench_data.py --only decode`` on one CPU thread of
this project's 2-core machine while other jobs ran (load average ~12; the two decoders
alternate within one run so both see the same load; see docs/data.md):

=============================================  ===============  ============  =====
images                                          torchvision.io   PIL           ratio
=============================================  ===============  ============  =====
2,000 real CIFAR-10 JPEGs, 32x32                4,638 img/s      2,471 img/s   1.9x
200 of them re-encoded at 500x375, quality 90   580 img/s        319 img/s     1.8x
=============================================  ===============  ============  =====

(A first, quieter measurement gave ~10,000 vs ~5,000 and ~1,200 vs ~900 img/s.) So JPEG,
PNG, WebP and GIF go through ``torchvision.io.decode_image``; other formats (BMP, TIFF, ...)
and anything torchvision rejects are retried with PIL, and only a file that both refuse is
reported as corrupt. torchvision deprecated these decoders in 0.29 (TorchCodec replaces
them): the deprecation warning is silenced and PIL takes over if they disappear.

Colour conversion follows torchvision's ``ImageFolder`` loader (``PIL.Image.convert("RGB")``)
so that numbers compare with code that uses it: grayscale is replicated to three channels,
palette images are expanded, CMYK is converted, and an alpha channel is dropped (not
composited). 16-bit images are scaled to 8 bits.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

try:  # deprecated since torchvision 0.29 in favour of torchcodec; PIL covers its removal
    from torchvision.io import ImageReadMode, decode_image

    warnings.filterwarnings(
        "ignore", message="The image decoding and encoding capabilities of TorchVision"
    )
except ImportError:  # pragma: no cover - future torchvision
    decode_image = None  # type: ignore[assignment]

#: Extensions torchvision decodes natively; others go straight to PIL.
TORCHVISION_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)


class CorruptImageError(Exception):
    """A file that neither torchvision nor PIL can decode (truncated, not an image, ...)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"cannot decode image {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _short(err: Exception) -> str:
    """The readable part of a torchvision C++ error ("decode_jpeg, <file>.cpp:171, msg")."""
    lines = str(err).strip().splitlines()
    last = lines[-1] if lines else type(err).__name__
    return re.split(r"\.cpp:\d+, ", last)[-1]


def _to_uint8_rgb(img: torch.Tensor) -> torch.Tensor:
    if img.dtype != torch.uint8:  # 16-bit PNGs
        img = TF.to_dtype(img, torch.uint8, scale=True)
    return img  # ImageReadMode.RGB: always 3 channels


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
    if decode_image is not None and path.suffix.lower() in TORCHVISION_EXTENSIONS:
        try:
            with open(path, "rb") as f:
                data = bytearray(f.read())  # plain Python read: faster than torchvision's read_file
        except OSError as err:
            raise CorruptImageError(path, f"cannot read file ({err})") from err
        if not data:
            raise CorruptImageError(path, "empty file")
        try:
            return _to_uint8_rgb(
                decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)
            )
        except (RuntimeError, ValueError) as err:
            first_error = _short(err)
    try:
        return _decode_pil(path)
    except (
        OSError,
        UnidentifiedImageError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as err:
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
