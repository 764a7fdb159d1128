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
import re
import stat
import struct
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from xai_graph.errors import XaiGraphError

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
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JP2_MAGIC = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_MAGIC = b"\xff\x4f\xff\x51"  # a raw codestream: SOC then SIZ
_TIFF_MAGICS = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, either byte order
_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


class ImageError(XaiGraphError):
    """An image that cannot be read; the message is one line (the CLI prints it as is)."""


@dataclass(frozen=True)
class _Header:
    kind: str
    width: int
    height: int
    extra_bytes_per_pixel: int = 0  # held by the decoder per full-size pixel, beyond the decoded image
    reducible: bool = False  # JPEG: libjpeg decodes at 1/2, 1/4, 1/8 with the memory of the reduced image
    scans: int = 1


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
        header = _read_header(data)
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
            found += sorted(p for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
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
def _checked_header(data: bytes, max_side: int) -> tuple[_Header, int]:
    """The header and the JPEG reduction factor (1 for other formats), or an ImageError saying why not to decode."""
    header = _read_header(data)
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


def _reduction(header: _Header, max_side: int) -> int:
    """The smallest of 1, 2, 4, 8 that brings a JPEG's longest side to max_side (8 when none does)."""
    if not header.reducible:
        return 1
    longest = max(header.width, header.height)
    return next((f for f in (1, 2, 4) if math.ceil(longest / f) <= max_side), 8)


def _decode_bytes(header: _Header, factor: int) -> int:
    decoded = math.ceil(header.width / factor) * math.ceil(header.height / factor)
    return decoded * _BYTES_PER_PIXEL + header.width * header.height * header.extra_bytes_per_pixel


def _too_large(header: _Header, factor: int, cost: int) -> str:
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
    if data.startswith(_PNG_MAGIC):
        return b"IEND" not in data[-64:]
    return False


def _decode(data: bytes, header: _Header, factor: int, max_side: int) -> np.ndarray:
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


# --- headers: the size of each format OpenCV decodes, detected by its magic bytes, never by the suffix ------------
def _read_header(data: bytes) -> _Header | None:
    for kind, matches, reader in _FORMATS:
        if matches(data):
            try:
                return reader(data)
            except (IndexError, KeyError, ValueError, struct.error):
                raise ImageError(f"{kind} header is damaged or incomplete") from None
    return None


def _png(data: bytes) -> _Header:
    if data[12:16] != b"IHDR":
        raise ValueError("IHDR is not the first chunk")
    animated = b"acTL" in data[8:data.find(b"IDAT")]  # APNG: OpenCV composes frames on an RGBA canvas
    return _Header("PNG", *struct.unpack_from(">II", data, 16), 8 if animated else 0)


_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RST0-7, SOI: markers without a length
_JPEG_FRAMES = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn; DHT, JPG and DAC share the range
_JPEG_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}


def _jpeg(data: bytes) -> _Header:
    frame, first_scan, pos = None, -1, 2  # frame: (SOF marker, width, height, components)
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF or marker in _JPEG_STANDALONE:  # a fill byte before a marker, or a marker alone
            pos += 1 if marker == 0xFF else 2
            continue
        if marker in _JPEG_FRAMES:
            height, width = struct.unpack_from(">HH", data, pos + 5)
            frame = (marker, width, height, data[pos + 9])
        elif marker in (0xD9, 0xDA) and frame:  # EOI, or the first scan: the frame is all we need
            first_scan = pos if marker == 0xDA else -1
            break
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    if frame is None:
        raise ValueError("no frame header")
    marker, width, height, components = frame
    scans = data.count(b"\xff\xda", first_scan) if first_scan >= 0 else 0  # entropy-coded data stuffs 0xFF
    # progressive, or one component at a time, or no scan in sight: libjpeg keeps every coefficient of the
    # full-size image (2 bytes a sample) however much it scales the output
    single_scan = scans and marker not in _JPEG_PROGRESSIVE and data[first_scan + 4] == components
    return _Header("JPEG", width, height, 0 if single_scan else 2 * components, reducible=True, scans=scans)


def _webp(data: bytes) -> _Header:
    chunk = bytes(data[12:16])
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return _Header("WebP", width & 0x3FFF, height & 0x3FFF, 1)  # the top 2 bits are an upscaling hint
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = struct.unpack_from("<I", data, 21)[0]
        return _Header("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 1)  # alpha: 1 more byte
    if chunk == b"VP8X":
        width, height = (int.from_bytes(struct.unpack_from("3s", data, at)[0], "little") + 1 for at in (24, 27))
        return _Header("WebP", width, height, 4 if data[20] & 0x02 else 1)  # an animation composes on RGBA
    raise ValueError(f"unknown first chunk {chunk!r}")


def _bmp(data: bytes) -> _Header:
    header_size = struct.unpack_from("<I", data, 14)[0]
    if header_size == 12:  # BITMAPCOREHEADER: unsigned 16-bit sides
        return _Header("BMP", *struct.unpack_from("<HH", data, 18))
    if header_size < 16:
        raise ValueError("unknown DIB header")
    width, height = struct.unpack_from("<ii", data, 18)  # BITMAPINFOHEADER and later
    if width < 0:
        raise ValueError("negative width")
    return _Header("BMP", width, abs(height))  # a negative height means rows run top-down


_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8
_TIFF_TAGS = {256: "width", 257: "height", 258: "bits", 277: "samples"}


def _tiff(data: bytes) -> _Header:
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\0", b"\0+")  # BigTIFF: 64-bit offsets and counts, 20-byte entries
    count_format, entry_size = ("Q", 20) if big else ("H", 12)
    ifd = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
    count = struct.unpack_from(order + count_format, data, ifd)[0]
    entries = ifd + struct.calcsize(count_format)
    found = {}
    for n in range(min(count, 4096)):  # a real first IFD has a few dozen entries
        entry = entries + n * entry_size
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag in _TIFF_TAGS and kind in _TIFF_TYPES:
            found[_TIFF_TAGS[tag]] = _tiff_first_value(data, order, kind, entry + 4, big)
    bits, samples = found.get("bits", 1), found.get("samples", 1)
    native = math.ceil(bits * samples / 8)
    # OpenCV reads a strip (often the whole image) at native depth, and converts deeper samples once more
    return _Header("TIFF", found["width"], found["height"], native * (2 if bits > 8 else 1))


def _tiff_first_value(data: bytes, order: str, kind: int, field: int, big: bool) -> int:
    """The first value of an IFD entry: in the entry itself when all values fit, else at the offset it holds."""
    word = order + ("Q" if big else "I")  # the count, and the value or its offset, are words of this size
    count, at = struct.unpack_from(word, data, field)[0], field + struct.calcsize(word)
    if count * struct.calcsize(_TIFF_TYPES[kind]) > struct.calcsize(word):
        at = struct.unpack_from(word, data, at)[0]
    return struct.unpack_from(order + _TIFF_TYPES[kind], data, at)[0]


# a comment runs to its line's end, and must end there: "#" inside a comment cannot start another (no backtracking)
_PNM_SIDES = re.compile(rb"P[1-6](?:\s|#[^\r\n]*[\r\n])+(\d{1,10})(?:\s|#[^\r\n]*[\r\n])+(\d{1,10})")
_PAM_FIELD = re.compile(rb"^(WIDTH|HEIGHT)[ \t]+(\d{1,10})[ \t]*$", re.MULTILINE)


def _pnm(data: bytes) -> _Header:
    head = bytes(data[:65536])  # the header is text; a long comment is still bounded
    if head[1:2] == b"7":
        end = head.find(b"ENDHDR")
        fields = {name.decode(): int(value) for name, value in _PAM_FIELD.findall(head, 0, end if end > 0 else 0)}
        return _Header("PAM", fields["WIDTH"], fields["HEIGHT"])
    match = _PNM_SIDES.match(head)
    if not match:
        raise ValueError("no width and height")
    return _Header("PNM", int(match[1]), int(match[2]))


def _jpeg2000_codestream(data: bytes, start: int = 0) -> _Header:
    if data[start:start + 4] != _J2K_MAGIC:
        raise ValueError("no SIZ marker")
    right, bottom, left, top = struct.unpack_from(">IIII", data, start + 8)
    components = struct.unpack_from(">H", data, start + 40)[0]
    if right < left or bottom < top:
        raise ValueError("image offset beyond its size")
    # OpenJPEG holds every sample as a 32-bit integer
    return _Header("JPEG 2000", right - left, bottom - top, 4 * components)


def _jp2(data: bytes) -> _Header:
    """The codestream's own size (what OpenJPEG decodes), else the size in the ihdr box."""
    declared = None
    for kind, start, end in _jp2_boxes(data, 0, len(data)):
        if kind == b"jp2c":
            return _jpeg2000_codestream(data, start)
        for child, child_start, _ in _jp2_boxes(data, start, end) if kind == b"jp2h" else ():
            if child == b"ihdr":
                height, width, components = struct.unpack_from(">IIH", data, child_start)
                declared = _Header("JPEG 2000", width, height, 4 * components)
    if declared is None:
        raise ValueError("no ihdr box")
    return declared


def _jp2_boxes(data: bytes, start: int, end: int):
    """(type, content start, content end) of each box between start and end."""
    pos = start
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:  # a 64-bit length follows the type
            length, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif length == 0:  # the last box runs to the end
            length = end - pos
        if length < header:
            raise ValueError("box shorter than its header")
        yield kind, pos + header, min(pos + length, end)
        pos += length


_FORMATS = (  # (name, test of the first bytes, header reader)
    ("PNG", lambda data: data.startswith(_PNG_MAGIC), _png),
    ("JPEG", lambda data: data.startswith(b"\xff\xd8\xff"), _jpeg),
    ("WebP", lambda data: data[:4] == b"RIFF" and data[8:12] == b"WEBP", _webp),
    ("BMP", lambda data: data.startswith(b"BM"), _bmp),
    ("TIFF", lambda data: bytes(data[:4]) in _TIFF_MAGICS, _tiff),
    ("PNM", lambda data: re.match(rb"P[1-7]\s", data[:3]) is not None, _pnm),
    ("JPEG 2000", lambda data: data.startswith(_JP2_MAGIC), _jp2),
    ("JPEG 2000", lambda data: data.startswith(_J2K_MAGIC), _jpeg2000_codestream),
)
