"""Image sizes from the first bytes of a file, before anything is decoded: the size of each format OpenCV
decodes (PNG, JPEG, WebP, BMP, TIFF/BigTIFF, PNM/PAM, JPEG 2000), detected by its magic bytes, never by the
suffix, with what its decoder holds per pixel. `images.read_image` prices a decode with it.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

from xai_graph.errors import XaiGraphError


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


_JP2_MAGIC = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


_J2K_MAGIC = b"\xff\x4f\xff\x51"  # a raw codestream: SOC then SIZ


_TIFF_MAGICS = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, either byte order


class ImageError(XaiGraphError):
    """An image that cannot be read; the message is one line (the CLI prints it as is)."""


@dataclass(frozen=True)
class Header:
    kind: str
    width: int
    height: int
    extra_bytes_per_pixel: int = 0  # held by the decoder per full-size pixel, beyond the decoded image
    reducible: bool = False  # JPEG: libjpeg decodes at 1/2, 1/4, 1/8 with the memory of the reduced image
    scans: int = 1


def read_header(data: bytes) -> Header | None:
    for kind, matches, reader in _FORMATS:
        if matches(data):
            try:
                return reader(data)
            except (IndexError, KeyError, ValueError, struct.error):
                raise ImageError(f"{kind} header is damaged or incomplete") from None
    return None


def _png(data: bytes) -> Header:
    if data[12:16] != b"IHDR":
        raise ValueError("IHDR is not the first chunk")
    animated = b"acTL" in data[8 : data.find(b"IDAT")]  # APNG: OpenCV composes frames on an RGBA canvas
    return Header("PNG", *struct.unpack_from(">II", data, 16), 8 if animated else 0)


_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RST0-7, SOI: markers without a length


_JPEG_FRAMES = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn; DHT, JPG and DAC share the range


_JPEG_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}


def _jpeg(data: bytes) -> Header:
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
    return Header("JPEG", width, height, 0 if single_scan else 2 * components, reducible=True, scans=scans)


def _webp(data: bytes) -> Header:
    chunk = bytes(data[12:16])
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return Header("WebP", width & 0x3FFF, height & 0x3FFF, 1)  # the top 2 bits are an upscaling hint
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = struct.unpack_from("<I", data, 21)[0]
        return Header("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 1)  # alpha: 1 more byte
    if chunk == b"VP8X":
        width, height = (int.from_bytes(struct.unpack_from("3s", data, at)[0], "little") + 1 for at in (24, 27))
        return Header("WebP", width, height, 4 if data[20] & 0x02 else 1)  # an animation composes on RGBA
    raise ValueError(f"unknown first chunk {chunk!r}")


def _bmp(data: bytes) -> Header:
    header_size = struct.unpack_from("<I", data, 14)[0]
    if header_size == 12:  # BITMAPCOREHEADER: unsigned 16-bit sides
        return Header("BMP", *struct.unpack_from("<HH", data, 18))
    if header_size < 16:
        raise ValueError("unknown DIB header")
    width, height = struct.unpack_from("<ii", data, 18)  # BITMAPINFOHEADER and later
    if width < 0:
        raise ValueError("negative width")
    return Header("BMP", width, abs(height))  # a negative height means rows run top-down


_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8


_TIFF_TAGS = {256: "width", 257: "height", 258: "bits", 277: "samples"}


def _tiff(data: bytes) -> Header:
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
    return Header("TIFF", found["width"], found["height"], native * (2 if bits > 8 else 1))


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


def _pnm(data: bytes) -> Header:
    head = bytes(data[:65536])  # the header is text; a long comment is still bounded
    if head[1:2] == b"7":
        end = head.find(b"ENDHDR")
        fields = {name.decode(): int(value) for name, value in _PAM_FIELD.findall(head, 0, end if end > 0 else 0)}
        return Header("PAM", fields["WIDTH"], fields["HEIGHT"])
    match = _PNM_SIDES.match(head)
    if not match:
        raise ValueError("no width and height")
    return Header("PNM", int(match[1]), int(match[2]))


def _jpeg2000_codestream(data: bytes, start: int = 0) -> Header:
    if data[start : start + 4] != _J2K_MAGIC:
        raise ValueError("no SIZ marker")
    right, bottom, left, top = struct.unpack_from(">IIII", data, start + 8)
    components = struct.unpack_from(">H", data, start + 40)[0]
    if right < left or bottom < top:
        raise ValueError("image offset beyond its size")
    # OpenJPEG holds every sample as a 32-bit integer
    return Header("JPEG 2000", right - left, bottom - top, 4 * components)


def _jp2(data: bytes) -> Header:
    """The codestream's own size (what OpenJPEG decodes), else the size in the ihdr box."""
    declared = None
    for kind, start, end in _jp2_boxes(data, 0, len(data)):
        if kind == b"jp2c":
            return _jpeg2000_codestream(data, start)
        for child, child_start, _ in _jp2_boxes(data, start, end) if kind == b"jp2h" else ():
            if child == b"ihdr":
                height, width, components = struct.unpack_from(">IIH", data, child_start)
                declared = Header("JPEG 2000", width, height, 4 * components)
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
    ("PNG", lambda data: data.startswith(PNG_MAGIC), _png),
    ("JPEG", lambda data: data.startswith(b"\xff\xd8\xff"), _jpeg),
    ("WebP", lambda data: data[:4] == b"RIFF" and data[8:12] == b"WEBP", _webp),
    ("BMP", lambda data: data.startswith(b"BM"), _bmp),
    ("TIFF", lambda data: bytes(data[:4]) in _TIFF_MAGICS, _tiff),
    ("PNM", lambda data: re.match(rb"P[1-7]\s", data[:3]) is not None, _pnm),
    ("JPEG 2000", lambda data: data.startswith(_JP2_MAGIC), _jp2),
    ("JPEG 2000", lambda data: data.startswith(_J2K_MAGIC), _jpeg2000_codestream),
)
