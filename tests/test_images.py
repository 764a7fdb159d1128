"""Reading images is bounded: header sizes for every format we decode, and no file hangs, floods memory or raises
anything but a one-line ImageError. Offline and fast: every image is made here."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from xai_graph.errors import XaiGraphError
from xai_graph.explaining.images import MAX_DECODE_SIDE, ImageError, find_images, image_size, read_image

REPO = Path(__file__).resolve().parents[1]
REAL_IMDECODE = cv2.imdecode
SIZES = [(1, 1), (37, 5), (5, 37), (65, 33), (640, 481)]
PEAK_RSS_MB = 300

# --- making images ----------------------------------------------------------------------------------------------


def noise(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def encode(ext: str, image: np.ndarray, params: tuple = ()) -> bytes:
    """The encoded bytes, or a skip when this OpenCV cannot write the format (or this size of it)."""
    try:
        ok, buffer = cv2.imencode(ext, image, list(params))
    except cv2.error:
        ok = False
    if not ok:
        pytest.skip(f"OpenCV here cannot encode {ext} at {image.shape}")
    return buffer.tobytes()


def decoded_shape(data: bytes) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "OpenCV cannot decode the test image itself"
    return image.shape[:2]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def zero_png(width: int, height: int) -> bytes:
    """A valid 1-bit gray PNG of zeros, compressed as it streams: a 30000x30000 one is about 110 KB."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter type 0, then the packed row
    rows_at_once = max(1, 4_000_000 // len(row))
    parts = [compressor.compress(row * min(rows_at_once, height - done)) for done in range(0, height, rows_at_once)]
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = b"".join(parts) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_with_size(width: int, height: int) -> bytes:
    """A valid tiny JPEG whose frame header is patched to declare width x height."""
    data = bytearray(encode(".jpg", noise(16, 16)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff(image: np.ndarray, order: str = "<", big: bool = False, side_type: int = 4) -> bytes:
    """An uncompressed 8-bit RGB TIFF in one strip, written by hand: either byte order, classic or BigTIFF."""
    height, width = image.shape[:2]
    pixels = image[..., ::-1].tobytes()  # TIFF stores RGB
    word, header = ("Q", 16) if big else ("I", 8)
    tags = [
        (256, side_type, width),
        (257, side_type, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 2),
        (273, 4, header),
        (277, 3, 3),
        (278, 4, height),
        (279, 4, len(pixels)),
    ]
    magic = (b"II" if order == "<" else b"MM") + struct.pack(order + "H", 43 if big else 42)
    out = magic + (
        struct.pack(order + "HHQ", 8, 0, header + len(pixels))
        if big
        else struct.pack(order + "I", header + len(pixels))
    )
    out += pixels + struct.pack(order + ("Q" if big else "H"), len(tags))
    for tag, kind, value in tags:
        field = struct.pack(order + {3: "H", 4: "I"}[kind], value).ljust(8 if big else 4, b"\0")
        out += struct.pack(order + "HH" + word, tag, kind, 1) + field
    return out + struct.pack(order + word, 0)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def in_subprocess(path: Path | str, timeout: float = 120) -> dict:
    """read_image(path) in a fresh interpreter: its error or shape, its peak RSS (MB) and how long the call took.

    The peak is the child's VmHWM: ru_maxrss would carry over the forking parent's (pytest's) peak across exec.

    The child limits its address space, so a regression fails there instead of starving this machine."""
    code = """if True:
        import json, resource, sys, time
        from xai_graph.explaining.images import ImageError, read_image
        size = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize"))) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + 2 * 2**30, size + 2 * 2**30))
        start = time.perf_counter()
        try:
            shape, error = list(read_image(sys.argv[1]).shape), None
        except ImageError as exc:
            shape, error = None, str(exc)
        print(json.dumps({"shape": shape, "error": error, "seconds": time.perf_counter() - start,
                          "peak_mb": hwm / 1024 if (hwm := next(int(l.split()[1]) for l in open("/proc/self/status")
                                                               if l.startswith("VmHWM"))) else 0}))
    """
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{Path(path).name}: {result}")  # the peak RSS, for whoever runs with -s
    return result


def refusal(path: Path) -> str:
    with pytest.raises(ImageError) as caught:
        read_image(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- image_size agrees with what OpenCV decodes -----------------------------------------------------------------

ENCODINGS = {  # name: (suffix, channels, encoder parameters, bytes that show which header variant was written)
    "png": (".png", 3, (), b"\x89PNG"),
    "jpeg": (".jpg", 3, (), b"\xff\xd8\xff"),
    "jpeg-progressive": (".jpg", 3, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), b"\xff\xd8\xff"),
    "jpeg-gray": (".jpg", 1, (), b"\xff\xd8\xff"),
    "webp-lossy": (".webp", 3, (cv2.IMWRITE_WEBP_QUALITY, 90), b"VP8 "),
    "webp-lossless": (".webp", 3, (cv2.IMWRITE_WEBP_QUALITY, 101), b"VP8L"),
    "webp-alpha": (".webp", 4, (cv2.IMWRITE_WEBP_QUALITY, 90), b"VP8X"),
    "bmp": (".bmp", 3, (), b"BM"),
    "tiff": (".tiff", 3, (), b"II*\0"),
    "ppm": (".ppm", 3, (), b"P6"),
    "pgm": (".pgm", 1, (), b"P5"),
    "pbm": (".pbm", 1, (), b"P4"),
    "ppm-ascii": (".ppm", 3, (cv2.IMWRITE_PXM_BINARY, 0), b"P3"),
    "pgm-ascii": (".pgm", 1, (cv2.IMWRITE_PXM_BINARY, 0), b"P2"),
    "pbm-ascii": (".pbm", 1, (cv2.IMWRITE_PXM_BINARY, 0), b"P1"),
    "pam": (".pam", 3, (), b"P7"),
    "jp2": (".jp2", 3, (), b"\x00\x00\x00\x0cjP  "),
}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", ENCODINGS)
def test_image_size_matches_the_decoded_shape(name, size, tmp_path):
    suffix, channels, params, marker = ENCODINGS[name]
    width, height = size
    data = encode(suffix, noise(width, height, channels), params)
    assert marker in data[:16], f"the encoder wrote another variant than {name}"
    assert image_size(data) == (width, height)
    assert decoded_shape(data) == (height, width)
    assert read_image(write(tmp_path / f"image{suffix}", data)).shape == (height, width, 3)


def test_raw_jpeg2000_codestream(tmp_path):
    jp2 = encode(".jp2", noise(64, 33))
    codestream = jp2[jp2.find(b"jp2c") + 4 :]  # the box's content: SOC, SIZ, ...
    assert codestream.startswith(b"\xff\x4f\xff\x51")
    assert image_size(codestream) == (64, 33) == decoded_shape(codestream)[::-1]
    assert read_image(write(tmp_path / "image.j2k", codestream)).shape == (33, 64, 3)


def test_jpeg_with_exif_fill_bytes_and_a_standalone_marker_before_the_frame(tmp_path):
    plain = encode(".jpg", noise(45, 23))
    exif_tiff = b"MM\0*" + struct.pack(">IHI", 8, 0, 0)  # a big-endian TIFF with an empty IFD
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(exif_tiff)) + b"Exif\0\0" + exif_tiff
    tem = b"\xff\x01"  # TEM: a marker without a length
    data = plain[:2] + app1 + b"\xff\xff\xff" + tem + plain[2:]  # 0xFF fill bytes may pad before any marker
    assert data.index(b"Exif") < data.index(b"\xff\xc0")
    assert image_size(data) == (45, 23) == decoded_shape(data)[::-1]
    assert read_image(write(tmp_path / "exif.jpg", data)).shape == (23, 45, 3)


def bmp_rows_top_down(data: bytes, width: int, height: int) -> bytes:
    """The same 24-bit BMP with its rows stored top-down, as a negative height says."""
    offset = struct.unpack_from("<I", data, 10)[0]
    stride = (width * 3 + 3) & ~3
    rows = [data[offset + r * stride : offset + (r + 1) * stride] for r in range(height)]
    header = bytearray(data[:offset])
    header[22:26] = struct.pack("<i", -height)
    return bytes(header) + b"".join(reversed(rows))


def test_bmp_bottom_up_top_down_and_core_header(tmp_path):
    image = noise(7, 5)
    bottom_up = encode(".bmp", image)
    assert struct.unpack_from("<i", bottom_up, 22)[0] == 5
    top_down = bmp_rows_top_down(bottom_up, 7, 5)
    stride = (7 * 3 + 3) & ~3
    rows = b"".join(image[r].tobytes().ljust(stride, b"\0") for r in range(4, -1, -1))
    core = b"BM" + struct.pack("<IHHI", 26 + len(rows), 0, 0, 26) + struct.pack("<IHHHH", 12, 7, 5, 1, 24) + rows
    for name, data in {"bottom-up": bottom_up, "top-down": top_down, "core": core}.items():
        assert image_size(data) == (7, 5), name
        assert np.array_equal(read_image(write(tmp_path / f"{name}.bmp", data)), image), name


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
@pytest.mark.parametrize("big", [False, True], ids=["classic", "bigtiff"])
@pytest.mark.parametrize("side_type", [3, 4], ids=["short", "long"])
def test_tiff_either_byte_order_classic_or_big(order, big, side_type, tmp_path):
    image = noise(7, 5)
    data = tiff(image, order, big, side_type)
    assert (
        data[:4]
        == {("<", False): b"II*\0", (">", False): b"MM\0*", ("<", True): b"II+\0", (">", True): b"MM\0+"}[order, big]
    )
    assert image_size(data) == (7, 5)
    assert np.array_equal(read_image(write(tmp_path / "image.tif", data)), image)


def test_pnm_header_with_comments(tmp_path):
    image = noise(7, 5)
    header = b"P6\n# made by hand\n#  7 5 are not the sides\n7 # a comment after the width\n5\n255\n"
    data = header + image[..., ::-1].tobytes()
    assert image_size(data) == (7, 5)
    assert np.array_equal(read_image(write(tmp_path / "comments.ppm", data)), image)


def test_pnm_comments_cannot_make_the_header_parser_crawl():
    start = time.perf_counter()
    assert image_size(b"P5\n" + b"#" * 100_000 + b"x") is None
    assert image_size(b"P5\n" + b"# #\n" * 10_000 + b"3 4\n255\n") == (3, 4)
    assert time.perf_counter() - start < 1


def test_unknown_formats_have_no_size():
    assert image_size(b"GIF89a\x10\x00\x10\x00") is None
    assert image_size(b"hello, world") is None
    assert image_size(b"") is None
    assert image_size(b"\x89PNG\r\n\x1a\n\0\0") is None  # a PNG cut inside its header


# --- decompression bombs ----------------------------------------------------------------------------------------


def test_zero_png_builder_makes_valid_pngs():
    data = zero_png(301, 203)
    assert decoded_shape(data) == (203, 301)


def test_png_bomb_is_refused_from_its_header(tmp_path):
    bomb = zero_png(30000, 30000)
    assert len(bomb) < 5_000_000
    assert image_size(bomb) == (30000, 30000)
    result = in_subprocess(write(tmp_path / "bomb.png", bomb))
    assert result["error"] == "image is 30000x30000 (900 megapixels); the limit is 64 megapixels"
    assert result["peak_mb"] < PEAK_RSS_MB


def test_jpeg_declaring_65000_squared_is_refused_even_at_an_eighth(tmp_path):
    data = jpeg_with_size(65000, 65000)
    assert image_size(data) == (65000, 65000)
    result = in_subprocess(write(tmp_path / "huge.jpg", data))
    assert result["error"] and "megapixels" in result["error"] and "1/8" in result["error"]
    assert result["peak_mb"] < PEAK_RSS_MB


def test_jpeg_declaring_30000x20000_decodes_at_an_eighth(tmp_path):
    result = in_subprocess(write(tmp_path / "large.jpg", jpeg_with_size(30000, 20000)))
    assert result["error"] is None
    assert result["shape"] == [2500, 3750, 3]
    assert result["peak_mb"] < PEAK_RSS_MB


def test_decoders_that_hold_more_per_pixel_are_charged_for_it(tmp_path):
    baseline = jpeg_with_size(12000, 12000)  # libjpeg decodes it at 1/4 in the memory of the reduced image
    progressive = bytearray(encode(".jpg", noise(16, 16), (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)))
    sof = progressive.find(b"\xff\xc2")  # but keeps every coefficient of a progressive one at full size
    progressive[sof + 5 : sof + 9] = struct.pack(">HH", 12000, 12000)
    jp2 = encode(".jp2", noise(64, 33))
    codestream = bytearray(jp2[jp2.find(b"jp2c") + 4 :])
    codestream[8:16] = struct.pack(">II", 7000, 7000)  # 49 megapixels, but OpenJPEG holds 4 bytes a sample
    assert read_image(write(tmp_path / "baseline.jpg", baseline)).shape == (3000, 3000, 3)
    for name, data in {"progressive.jpg": progressive, "codestream.j2k": codestream}.items():
        assert "takes the memory of" in refusal(write(tmp_path / name, bytes(data))), name


def test_progressive_jpeg_with_too_many_scans_is_refused(tmp_path):
    data = encode(".jpg", noise(64, 64), (cv2.IMWRITE_JPEG_PROGRESSIVE, 1))
    starts = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
    scans = [data[a:b] for a, b in zip(starts, starts[1:] + [len(data) - 2])]
    assert len(scans) > 1
    many = data[:-2] + min(scans, key=len) * 300 + b"\xff\xd9"
    assert read_image(write(tmp_path / "few.jpg", data)).shape == (64, 64, 3)
    assert "scans" in refusal(write(tmp_path / "many.jpg", many))


# --- files that are not images, or not files --------------------------------------------------------------------


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome = []

    def read():
        try:
            read_image(fifo)
        except ImageError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)  # a hung read must not hang the test run
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive(), "read_image blocked on a FIFO"
    assert outcome and "FIFO" in outcome[0]


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero here")
def test_endless_device_is_refused():
    result = in_subprocess("/dev/zero", timeout=60)
    assert result["error"] == "not a regular file (a character device)"
    assert result["peak_mb"] < PEAK_RSS_MB


def test_sparse_3gb_file_is_refused_from_its_size(tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff")
    os.truncate(big, 3 * 2**30)
    result = in_subprocess(big, timeout=60)
    assert result["error"] == "file is 3072 MiB; the limit is 256 MiB"
    assert result["seconds"] < 2
    assert result["peak_mb"] < PEAK_RSS_MB


def test_damaged_and_foreign_files_are_one_line_errors(tmp_path):
    png = encode(".png", noise(40, 30))
    jpg = encode(".jpg", noise(40, 30))
    zero_width = bytearray(png)
    zero_width[16:20] = b"\0\0\0\0"
    assert refusal(write(tmp_path / "empty.png", b"")) == "empty file"
    assert refusal(write(tmp_path / "cut.png", png[: len(png) // 2])) == "truncated image file"
    assert refusal(write(tmp_path / "cut.jpg", jpg[: len(jpg) // 2])) == "truncated image file"
    assert refusal(write(tmp_path / "header.png", png[:20])) == "PNG header is damaged or incomplete"
    assert "zero width or height" in refusal(write(tmp_path / "zero.png", bytes(zero_width)))
    assert refusal(write(tmp_path / "notes.png", b"just some text\n")).startswith("not a supported image format")
    assert refusal(tmp_path) == "not a regular file (a folder)"
    assert refusal(tmp_path / "missing.png") == "cannot read (No such file or directory)"


def test_unknown_magic_named_explicitly_is_listed_then_refused(tmp_path):
    blob = write(tmp_path / "scan.dat", bytes(range(256)) * 4)
    assert find_images([str(blob)]) == [blob.resolve()]
    message = refusal(blob)
    assert message.startswith("not a supported image format") and "JPEG 2000" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    locked = write(tmp_path / "locked.png", encode(".png", noise(4, 4)))
    locked.chmod(0)
    assert refusal(locked) == "cannot read (Permission denied)"


# --- large images come back shrunk ------------------------------------------------------------------------------


def test_wide_png_is_shrunk_to_the_longest_side(tmp_path):
    image = read_image(write(tmp_path / "wide.png", encode(".png", noise(5000, 300))))
    assert image.shape[1] == MAX_DECODE_SIDE
    assert abs(image.shape[0] - 300 * MAX_DECODE_SIDE / 5000) <= 1


def test_large_jpeg_decodes_reduced(tmp_path):
    gradient = np.broadcast_to(np.linspace(0, 255, 6000, dtype=np.uint8)[None, :, None], (4000, 6000, 3))
    path = write(tmp_path / "photo.jpg", encode(".jpg", np.ascontiguousarray(gradient)))
    assert read_image(path).shape == (2000, 3000, 3)  # 1/2 is the smallest reduction that fits 4096
    assert read_image(path, max_side=1000).shape == (500, 750, 3)  # 1/8 is the first that fits 1000


# --- heavy decodes take turns -----------------------------------------------------------------------------------


def concurrent_decodes(paths: list[Path], monkeypatch) -> int:
    """The most decodes that ran at once while one thread per path read its image."""
    active, peak, lock = [0], [0], threading.Lock()

    def slow_imdecode(buffer, flags):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)  # long enough for every other thread to arrive
        try:
            return REAL_IMDECODE(buffer, flags)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(cv2, "imdecode", slow_imdecode)
    start = threading.Barrier(len(paths))
    threads = [threading.Thread(target=lambda p=p: (start.wait(), read_image(p))) for p in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return peak[0]


def test_decodes_over_16_megapixels_run_one_at_a_time(tmp_path, monkeypatch):
    heavy = encode(".png", np.zeros((4001, 4000), np.uint8))  # 16.004 megapixels
    light = encode(".png", np.zeros((100, 100), np.uint8))
    heavy_paths = [write(tmp_path / f"heavy{i}.png", heavy) for i in range(4)]
    light_paths = [write(tmp_path / f"light{i}.png", light) for i in range(4)]
    assert concurrent_decodes(heavy_paths, monkeypatch) == 1
    assert concurrent_decodes(light_paths, monkeypatch) > 1


# --- finding the images -----------------------------------------------------------------------------------------


def test_find_images_refuses_names_that_match_nothing(tmp_path):
    for missing in (str(tmp_path / "absent"), str(tmp_path / "*.png")):
        with pytest.raises(ImageError, match="no such file or folder") as caught:
            find_images([missing])
        assert isinstance(caught.value, XaiGraphError)  # the CLI prints it as one line, exit code 1
        assert str(caught.value) == f"{missing}: no such file or folder"


def test_find_images_in_a_folder_skips_fifos_readmes_and_hidden_files(tmp_path):
    png = encode(".png", noise(4, 4))
    (tmp_path / "sub").mkdir()
    images = [write(tmp_path / "a.png", png), write(tmp_path / "sub" / "b.PNG", png)]
    write(tmp_path / "README", b"photos from the field trip\n")
    write(tmp_path / ".hidden.png", png)
    os.mkfifo(tmp_path / "pipe.png")
    assert find_images([str(tmp_path)]) == [p.resolve() for p in images]
    assert find_images([str(tmp_path / "*.png"), str(tmp_path / "a.png")]) == [images[0].resolve()]
