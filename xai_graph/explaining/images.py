"""Decode images robustly and within bounds: any depth or channel count to 8-bit BGR, at most MAX_DECODE_SIDE a side.

Every failure is an `ImageError` with a one-line reason, so a run over a folder can record it and go on. No
file can hang the process or exhaust its memory: only regular files are read (opened without blocking, so a
FIFO never waits for a writer), at most MAX_IMAGE_BYTES of them; the decoded size comes from the header before
OpenCV sees the data, and a format whose header we cannot read is refused rather than decoded blind.

A decode may take MAX_IMAGE_PIXELS * 8 bytes (512 MB). Decoders hold about 6 bytes per decoded pixel (the BGR
result and a working copy), so each pixel is charged 8; what holds more (animations, TIFF strips at native
depth, JPEG 2000's 32-bit samples, a progressive JPEG's coefficients) is charged the extra. JPEG decodes at 1/2,
1/4 or 1/8 (libjpeg scales while decoding); other formats decode at full size and are shrunk afterwards.

Worst case with the pipeline's 8 loader threads: a decode over 16 megapixels (128 MB) or a file over 32 MiB is
handled one at a time, so 7 light loads (a file of up to 32 MiB, a decode of up to 128 MB) run beside one heavy
one (256 MiB, 512 MB): about 1.9 GB whatever the files; an image kept afterwards is at most 4096x4096x3 bytes.
"""

from __future__ import annotations

import glob
import math
import os
import stat
import threading
from contextlib import nullcontext
from pathlib import Path

import cv2
import numpy as np

from xai_graph.explaining.image_headers import PNG_MAGIC, Header, ImageError, read_header

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm", ".ppm", ".pnm"}
MAX_DECODE_SIDE = 4096  # larger images are shrunk; JPEG decodes at 1/2, 1/4 or 1/8 on the way
MAX_IMAGE_BYTES = 256 * 2**20  # the most of a file ever read
MAX_IMAGE_PIXELS = 64_000_000  # the largest decode, at 8 bytes a pixel (JPEG: after its reduction)
SUPPORTED_FORMATS = "PNG, JPEG, WebP, BMP, TIFF, PNM/PAM, JPEG 2000"

_BYTES_PER_PIXEL = 8  # what a decoder holds per decoded pixel (measured: about 6; WebP with alpha 8)
_MAX_DECODE_BYTES = MAX_IMAGE_PIXELS * _BYTES_PER_PIXEL
_HEAVY_DECODE_BYTES = 16_000_000 * _BYTES_PER_PIXEL  # above this a decode waits for the others
_HEAVY_FILE_BYTES = 32 * 2**20  # a file this large is read (and decoded) by one thread at a time
_MAX_JPEG_SCANS = 256  # each scan passes over the whole image: a small file of thousands would run for minutes
_HEAVY_WORK = threading.RLock()  # re-entrant: a large file's decode may also be a heavy decode

_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def read_image(path: str | Path, max_side: int = MAX_DECODE_SIDE) -> np.ndarray:
    """An 8-bit BGR image (gray, RGBA and 16-bit inputs converted), its longest side at most `max_side`."""
    fd, size = _open_regular_file(path)
    with _HEAVY_WORK if size > _HEAVY_FILE_BYTES else nullcontext():
        data = _read_and_close(fd, size)
        header, factor = _checked_header(data, max_side)
        with _HEAVY_WORK if _decode_bytes(header, factor) > _HEAVY_DECODE_BYTES else nullcontext():
            return _decode(data, header, factor, max_side)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header, without decoding; None for a format we cannot read it from."""
    try:
        header = read_header(data)
    except ImageError:
        return None
    return (header.width, header.height) if header else None


def find_images(inputs: list[str]) -> list[Path]:
    """Files named by paths and glob patterns, and the images in folders (recursive), without repeats.

    Inside folders only image suffixes count (a README beside the photos is not a failure); a file named
    explicitly is always tried, so a bad one is reported; an input that names nothing is an error.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            # is_file() is False for FIFOs and devices, so the walk never opens one
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
        elif path.exists():
            found.append(path)
        elif glob.escape(item) != item and (matches := glob.glob(item, recursive=True)):
            found += sorted(Path(p) for p in matches if Path(p).is_file())
        else:
            raise ImageError(f"{item}: no such file or folder")
    return list(dict.fromkeys(p.resolve() for p in found))


# --- reading the file -------------------------------------------------------------------------------------------
def _open_regular_file(path: str | Path) -> tuple[int, int]:
    """(descriptor, size) of a regular file no larger than MAX_IMAGE_BYTES."""
    try:
        _refuse_special(os.stat(path).st_mode)  # never open a device: opening one can have effects
        # O_NONBLOCK: should a FIFO replace the file after the stat, opening it still does not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ImageError(f"cannot read ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        _refuse_special(info.st_mode)
        if info.st_size > MAX_IMAGE_BYTES:
            raise ImageError(f"file is {info.st_size / 2**20:.0f} MiB; the limit is {MAX_IMAGE_BYTES // 2**20} MiB")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def _refuse_special(mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
        raise ImageError(f"not a regular file ({kind})")


def _read_and_close(fd: int, size: int) -> bytearray:
    """At most `size` bytes (the size fstat gave): a file that grows meanwhile is not followed."""
    data = bytearray(size)
    filled = 0
    try:
        with open(fd, "rb", buffering=0) as file, memoryview(data) as view:
            while filled < size and (count := file.readinto(view[filled:])):
                filled += count
    except OSError as exc:
        raise ImageError(f"cannot read ({exc.strerror or exc})") from None
    del data[filled:]  # the file shrank since fstat (or is empty)
    if not data:
        raise ImageError("empty file")
    return data


# --- what the decode will cost ----------------------------------------------------------------------------------
def _checked_header(data: bytes, max_side: int) -> tuple[Header, int]:
    """The header and the JPEG reduction factor (1 for other formats), or an ImageError saying why not to decode."""
    header = read_header(data)
    if header is None:
        raise ImageError(f"not a supported image format (reads {SUPPORTED_FORMATS})")
    if _is_truncated(data):
        raise ImageError("truncated image file")
    if not header.width or not header.height:
        raise ImageError(f"{header.kind} header gives a zero width or height ({header.width}x{header.height})")
    if header.scans > _MAX_JPEG_SCANS:
        raise ImageError(f"JPEG has {header.scans} scans; the limit is {_MAX_JPEG_SCANS}")
    factor = _reduction(header, max_side)
    cost = _decode_bytes(header, factor)
    if cost > _MAX_DECODE_BYTES:
        raise ImageError(_too_large(header, factor, cost))
    return header, factor


def _reduction(header: Header, max_side: int) -> int:
    """The smallest of 1, 2, 4, 8 that brings a JPEG's longest side to max_side (8 when none does)."""
    if not header.reducible:
        return 1
    longest = max(header.width, header.height)
    return next((f for f in (1, 2, 4) if math.ceil(longest / f) <= max_side), 8)


def _decode_bytes(header: Header, factor: int) -> int:
    decoded = math.ceil(header.width / factor) * math.ceil(header.height / factor)
    return decoded * _BYTES_PER_PIXEL + header.width * header.height * header.extra_bytes_per_pixel


def _too_large(header: Header, factor: int, cost: int) -> str:
    pixels = header.width * header.height
    text = f"image is {header.width}x{header.height} ({_megapixels(pixels)} megapixels"
    if cost != pixels * _BYTES_PER_PIXEL:
        scale = f" at 1/{factor} scale" if factor > 1 else ""
        text += f"; decoding it{scale} takes the memory of {_megapixels(cost // _BYTES_PER_PIXEL)} megapixels"
    return f"{text}); the limit is {_megapixels(MAX_IMAGE_PIXELS)} megapixels"


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f}".removesuffix(".0")


def _is_truncated(data: bytes) -> bool:
    """JPEG without its end marker, PNG without its IEND chunk: decoders would return a partial image."""
    if data.startswith(b"\xff\xd8"):
        return b"\xff\xd9" not in data[-1024:]
    if data.startswith(PNG_MAGIC):
        return b"IEND" not in data[-64:]
    return False


def _decode(data: bytes, header: Header, factor: int, max_side: int) -> np.ndarray:
    flag = _REDUCED[factor] if factor > 1 else cv2.IMREAD_COLOR
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error as exc:  # OpenCV asserts on some damaged files
        reason = str(exc).strip().splitlines()[-1][:200]
        raise ImageError(f"not a decodable {header.kind} image ({reason})") from None
    if image is None or image.size == 0:
        raise ImageError(f"not a decodable {header.kind} image")
    longest = max(image.shape[:2])
    if longest <= max_side:
        return image
    # INTER_AREA averages the pixels each output pixel covers: no aliasing when shrinking
    width, height = (max(1, round(side * max_side / longest)) for side in (image.shape[1], image.shape[0]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
