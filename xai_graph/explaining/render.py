"""Saliency maps onto images: resize (bilinear), JET colour (red = focus), overlay, and encoding to file bytes.

Knows nothing of graphs or runtimes: a map is a 2-D array covering the model's
input, and a `Placement` says where that input lies on the image. Encoding returns
bytes and writes nothing, so that any engine (threads here, processes or actors
elsewhere) renders the same files and leaves writing to whoever owns the folder.
"""

from __future__ import annotations

import cv2
import numpy as np

from xai_graph.explaining.preprocess import Placement

MAX_RENDER_SIDE = 2048  # maps and overlays of larger photos are rendered at this size at most


def render_size(image_shape: tuple[int, ...], max_side: int = MAX_RENDER_SIDE) -> tuple[int, int]:
    """(width, height) to render at: the image's own size, shrunk to `max_side` if larger."""
    h, w = image_shape[:2]
    r = min(1.0, max_side / max(h, w))
    return max(1, round(w * r)), max(1, round(h * r))


def map_to_image(
    saliency: np.ndarray,
    placement: Placement,
    input_size: tuple[int, int],
    image_shape: tuple[int, ...],
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Resize a map covering the model input onto the image, bilinearly.

    Returns (map, inside): the map at `size` (default: the image's render size), as
    float32, and a bool mask of the pixels the model saw (False outside a centre crop).
    """
    return _warp(saliency.astype(np.float32), placement, input_size, image_shape, size)


def map_to_image_u8(
    saliency_u8: np.ndarray,
    placement: Placement,
    input_size: tuple[int, int],
    image_shape: tuple[int, ...],
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`map_to_image` for a uint8 map, giving uint8: what overlays are coloured from.

    OpenCV's fixed-point bilinear (1/32-pixel positions) is within a few levels of the float
    result, invisible under JET, and 10x faster than warping floats and rounding them back.
    """
    if saliency_u8.dtype != np.uint8:
        raise TypeError(f"map_to_image_u8 takes a uint8 map, not {saliency_u8.dtype}")
    return _warp(saliency_u8, placement, input_size, image_shape, size)


def _warp(
    saliency: np.ndarray,
    placement: Placement,
    input_size: tuple[int, int],
    image_shape: tuple[int, ...],
    size: tuple[int, int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    out_w, out_h = size or render_size(image_shape)
    img_h, img_w = image_shape[:2]
    in_w, in_h = input_size
    map_h, map_w = saliency.shape
    rx, ry = out_w / img_w, out_h / img_h
    # Continuous coordinates, pixel centres at +0.5: destination pixel -> map index.
    ax = placement.scale_x * map_w / (in_w * rx)
    ay = placement.scale_y * map_h / (in_h * ry)
    bx = (0.5 / rx - placement.offset_x) * placement.scale_x * map_w / in_w - 0.5
    by = (0.5 / ry - placement.offset_y) * placement.scale_y * map_h / in_h - 0.5
    matrix = np.array([[ax, 0, bx], [0, ay, by]], dtype=np.float64)
    resized = cv2.warpAffine(
        saliency, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )
    xs = (np.arange(out_w) * ax + bx + 0.5) / map_w
    ys = (np.arange(out_h) * ay + by + 0.5) / map_h
    inside = ((ys >= 0) & (ys <= 1))[:, None] & ((xs >= 0) & (xs <= 1))[None, :]
    return resized, inside


def colorize(saliency_u8: np.ndarray) -> np.ndarray:
    """uint8 map -> BGR image, OpenCV's JET: 0 blue, 255 red."""
    return cv2.applyColorMap(saliency_u8, cv2.COLORMAP_JET)


def to_uint8(saliency: np.ndarray) -> np.ndarray:
    """A map in 0..255 (a uint8 head output after resizing, or `scale_raw`) -> uint8, rounded half to even."""
    s = np.maximum(np.asarray(saliency, dtype=np.float32), 0)  # convertScaleAbs takes |x|: negatives clip to 0
    # One OpenCV pass rounds and saturates: 7x faster than numpy's round + clip + astype on a full-size map.
    return cv2.convertScaleAbs(s)


def overlay(image_bgr: np.ndarray, colored: np.ndarray, alpha: float, inside: np.ndarray | None = None) -> np.ndarray:
    """image * (1 - alpha) + map * alpha: `alpha` is the weight of the map (0 = image only, 1 = map only)."""
    if image_bgr.shape[:2] != colored.shape[:2]:
        image_bgr = cv2.resize(image_bgr, (colored.shape[1], colored.shape[0]), interpolation=cv2.INTER_AREA)
    blended = cv2.addWeighted(image_bgr, 1.0 - alpha, colored, alpha, 0.0)
    if inside is not None and not inside.all():
        # The plain image outside the crop (masked indexing takes 10x as long on a full-size image).
        np.copyto(blended, image_bgr, where=~inside[..., None])
    return blended


JPEG_QUALITY = 95  # OpenCV's default, stated: overlays are photos, where JPEG at 95 shows no visible loss
# Single-channel images (maps; a full-size one is a smooth ramp) take the Sub filter, which turns ramps into runs
# of small deltas that zlib's fastest level packs to half the size of OpenCV's default in 0.7x its time. Colour
# overlays are photos: OpenCV's default (RLE strategy) is the fastest setting for them, and no PNG setting comes
# near JPEG (8 ms against 0.9 ms for 600x400 on one core), which is why overlays are JPEG by default.
_PNG_GRAY = [cv2.IMWRITE_PNG_COMPRESSION, 1]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV 4.10+
    _PNG_GRAY += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


def encode_image(image: np.ndarray, ext: str) -> bytes:
    """An image as the bytes of a `.png` or `.jpg` file (nothing is written)."""
    ext = ext if ext.startswith(".") else "." + ext
    if ext == ".png":
        params = _PNG_GRAY if image.ndim == 2 else []
    else:
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    ok, encoded = cv2.imencode(ext, image, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {ext}")
    return encoded.tobytes()


def scale_raw(saliency: np.ndarray) -> np.ndarray:
    """A raw float map -> 0..255 float, per map: what the uint8 head does in the graph."""
    low, high = float(saliency.min()), float(saliency.max())
    return 255.0 * (saliency - low) / (high - low + 1e-12)
