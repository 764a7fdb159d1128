"""Decode images robustly: any depth or channel count to 8-bit BGR, huge photos at reduced size.

Every failure is an `ImageError` with a short reason, so a run over a folder can
record it and go on.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm", ".ppm", ".pnm"}
MAX_DECODE_SIDE = 4096  # larger photos decode at 1/2, 1/4 or 1/8 (JPEG scales while decoding)
_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageError(Exception):
    pass


def read_image(path: str | Path, max_side: int = MAX_DECODE_SIDE) -> np.ndarray:
    """An 8-bit BGR image (gray, RGBA and 16-bit inputs converted)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read ({exc.strerror or exc})") from None
    if not data:
        raise ImageError("empty file")
    if _is_truncated(data):
        raise ImageError("truncated image file")
    buffer = np.frombuffer(data, dtype=np.uint8)
    size = image_size(data)
    factor = next((f for f in (2, 4, 8) if size and max(size) / f <= max_side), 8) if size and max(size) > max_side else 1
    image = cv2.imdecode(buffer, _REDUCED[factor] if factor > 1 else cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageError("not a decodable image")
    return image


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, without decoding; None for other formats."""
    if data.startswith(_PNG_MAGIC) and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            length = struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return w, h
            i += 2 + length
    return None


def _is_truncated(data: bytes) -> bool:
    """JPEG without its end marker, PNG without its IEND chunk: decoders would return a partial image."""
    if data.startswith(b"\xff\xd8"):
        return b"\xff\xd9" not in data[-1024:]
    if data.startswith(_PNG_MAGIC):
        return b"IEND" not in data[-64:]
    return False


def find_images(inputs: list[str]) -> list[Path]:
    """Files named by paths and glob patterns, and the images in folders (recursive), without repeats.

    Inside folders only image suffixes count (a README beside the photos is not a
    failure); a file named explicitly is always tried, so a bad one is reported.
    """
    import glob

    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        elif path.exists():
            found.append(path)
        else:
            found += sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
    return list(dict.fromkeys(p.resolve() for p in found))
