"""From a decoded image to the model's input tensor, and back from map to image.

Preprocessing comes from the model where it says so (OTX / Model API metadata,
`model_info <key>` entries: mean_values, scale_values, reverse_input_channels,
resize_type, labels), from flags otherwise. Every resize records a `Placement`:
where the model's input rectangle lies on the original image, which is what
puts a saliency map back on the right pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from xai_graph.errors import XaiGraphError

RESIZE_TYPES = ("standard", "fit_to_window_letterbox", "crop")
MODEL_INFO = "model_info"


@dataclass(frozen=True)
class Placement:
    """Input pixel (u, v) shows image pixel (u / scale_x + offset_x, v / scale_y + offset_y)."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float


@dataclass(frozen=True)
class Preprocessing:
    width: int
    height: int
    layout: str = "NCHW"  # or "NHWC"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)  # input = (pixel - mean) / scale
    rgb: bool = True  # the model takes RGB (images are decoded as BGR)
    resize: str = "standard"
    pad_value: int = 0

    def with_overrides(self, **overrides) -> Preprocessing:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def __call__(self, image_bgr: np.ndarray) -> tuple[np.ndarray, Placement]:
        """uint8 BGR image -> float32 tensor in the model's layout (no batch axis), and its placement."""
        fitted, placement = self.fit(image_bgr)
        return self.to_tensor(fitted), placement

    def to_tensor(self, fitted_bgr: np.ndarray) -> np.ndarray:
        """An image already at the input size (from `fit`, perhaps perturbed since) -> the model's tensor."""
        pixels = fitted_bgr[:, :, ::-1] if self.rgb else fitted_bgr
        tensor = (pixels.astype(np.float32) - np.float32(self.mean)) / np.float32(self.scale)
        if self.layout == "NCHW":
            tensor = tensor.transpose(2, 0, 1)
        return np.ascontiguousarray(tensor)

    def fit(self, image: np.ndarray) -> tuple[np.ndarray, Placement]:
        """The image resized (letterboxed, cropped) to the input size, BGR uint8, and its placement."""
        h, w = image.shape[:2]
        if self.resize == "standard":
            out = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
            return out, Placement(self.width / w, self.height / h, 0.0, 0.0)
        if self.resize == "fit_to_window_letterbox":
            s = min(self.width / w, self.height / h)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            canvas = np.full((self.height, self.width, 3), self.pad_value, dtype=np.uint8)
            x0, y0 = (self.width - nw) // 2, (self.height - nh) // 2
            canvas[y0 : y0 + nh, x0 : x0 + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            return canvas, Placement(nw / w, nh / h, -x0 * w / nw, -y0 * h / nh)
        if self.resize == "crop":  # resize the shorter side, then take the centre
            s = max(self.width / w, self.height / h)
            nw, nh = max(self.width, round(w * s)), max(self.height, round(h * s))
            scaled = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            x0, y0 = (nw - self.width) // 2, (nh - self.height) // 2
            return (
                np.ascontiguousarray(scaled[y0 : y0 + self.height, x0 : x0 + self.width]),
                Placement(nw / w, nh / h, x0 * w / nw, y0 * h / nh),
            )
        raise XaiGraphError(f"unknown resize type {self.resize!r}; choose one of {', '.join(RESIZE_TYPES)}")


@dataclass
class ModelInfo:
    """What a model's metadata says about its classes and preprocessing."""

    labels: list[str] = field(default_factory=list)
    preprocessing: dict = field(default_factory=dict)  # Preprocessing fields found in the metadata
    multilabel: bool = False


def read_model_info(metadata: dict[str, str]) -> ModelInfo:
    info = {k.split(" ", 1)[1]: v for k, v in metadata.items() if k.startswith(MODEL_INFO + " ")}
    result = ModelInfo(labels=info.get("labels", "").split(), multilabel=_flag(info.get("multilabel")))
    if "mean_values" in info:
        result.preprocessing["mean"] = parse_triple(info["mean_values"])
    if "scale_values" in info:
        result.preprocessing["scale"] = parse_triple(info["scale_values"])
    if "reverse_input_channels" in info:
        result.preprocessing["rgb"] = _flag(info["reverse_input_channels"])
    if info.get("resize_type") in RESIZE_TYPES:
        result.preprocessing["resize"] = info["resize_type"]
    elif info.get("resize_type") == "fit_to_window":
        result.preprocessing["resize"] = "fit_to_window_letterbox"
    if "pad_value" in info:
        result.preprocessing["pad_value"] = int(float(info["pad_value"]))
    return result


def model_info_metadata(labels=None, mean=None, std=None, bgr=None, resize=None) -> dict[str, str]:
    """Metadata entries in the Model API form (`model_info <key>`), for the values given."""
    entries = {"model_type": "Classification"}
    if labels is not None:
        # Model API separates labels by spaces: whitespace inside a label becomes "_".
        entries["labels"] = " ".join(re.sub(r"\s+", "_", label.strip()) or "_" for label in labels)
    if mean is not None:
        entries["mean_values"] = " ".join(f"{v:g}" for v in parse_triple(mean))
    if std is not None:
        entries["scale_values"] = " ".join(f"{v:g}" for v in parse_triple(std))
    if bgr is not None:
        entries["reverse_input_channels"] = str(not bgr)  # Model API: swap the BGR images to RGB
    if resize is not None:
        entries["resize_type"] = resize
    return {f"{MODEL_INFO} {k}": v for k, v in entries.items()}


def _flag(text: str | None) -> bool:
    return str(text).strip().lower() in ("true", "1", "yes")


def parse_triple(values) -> tuple[float, float, float]:
    if isinstance(values, str):
        values = values.replace(",", " ").split()
    try:
        values = [float(v) for v in values]
    except ValueError:
        raise XaiGraphError(f"expected 1 or 3 numbers (per channel), got {' '.join(map(str, values))!r}") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise XaiGraphError(f"expected 1 or 3 values, got {values}")
    return tuple(values)  # type: ignore[return-value]
