"""Final detections in a detector's outputs: find their layout, read them, map boxes onto the image.

Knows nothing of graph editing. Layouts recognised (boxes in model-input pixels, x1 y1 x2 y2):
- `[B, N, 6]` or `[N, 6]`: x1, y1, x2, y2, score, label;
- OTX / mmdeploy: `boxes` (or `bboxes`, `dets`) `[B, N, 5]` with the score last, and an integer `labels [B, N]`;
- torchvision: `boxes [N, 4]`, `scores [N]`, `labels [N]` (one image per run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xai_graph.explaining.preprocess import Placement


@dataclass
class Detection:
    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels


@dataclass(frozen=True)
class DetectionLayout:
    boxes: str  # output name
    scores: str | None  # None: the score is column 4 of `boxes`
    labels: str | None  # None: the label is column 5 of `boxes`
    batched: bool  # outputs carry a batch axis


def find_layout(outputs: dict[str, tuple[tuple, bool]]) -> DetectionLayout | None:
    """outputs: name -> (shape, is_integer). None where no final detections are output."""
    by_rank = {name: (shape, integer) for name, (shape, integer) in outputs.items() if shape}
    for name, (shape, integer) in by_rank.items():
        if not integer and len(shape) in (2, 3) and shape[-1] == 6:
            return DetectionLayout(name, None, None, len(shape) == 3)
    labels = [n for n, (shape, integer) in by_rank.items() if integer and len(shape) in (1, 2)]
    if not labels:
        return None
    for name, (shape, integer) in by_rank.items():
        found = None if integer else _boxes_with_labels(name, shape, labels, by_rank)
        if found is not None:
            return found
    return None


def _boxes_with_labels(name: str, shape: tuple, labels: list[str], by_rank: dict) -> DetectionLayout | None:
    """Boxes with their scores [B, N, 5] (batched) or [N, 4] beside [N] scores, and their integer labels."""
    if len(shape) == 3 and shape[-1] == 5:
        return DetectionLayout(name, None, next((n for n in labels if len(by_rank[n][0]) == 2), labels[0]), True)
    if len(shape) == 2 and shape[-1] == 4:
        scores = [n for n, (s, i) in by_rank.items() if not i and len(s) == 1]
        if scores:
            return DetectionLayout(name, scores[0], next(n for n in labels if len(by_rank[n][0]) == 1), False)
    return None


def read_detections(outputs: dict[str, np.ndarray], layout: DetectionLayout, image: int) -> np.ndarray:
    """[M, 6] rows (x1, y1, x2, y2, score, class) of one image, in model-input pixels."""
    boxes = outputs[layout.boxes]
    if layout.batched:
        boxes = boxes[image]
    if layout.scores is None and layout.labels is None:
        return boxes.astype(np.float64).reshape(-1, 6)
    labels = outputs[layout.labels]
    labels = labels[image] if layout.batched and labels.ndim == 2 else labels
    scores = boxes[:, 4] if layout.scores is None else outputs[layout.scores]
    return np.column_stack([boxes[:, :4], scores, labels]).astype(np.float64)


def to_image(rows: np.ndarray, placement: Placement, threshold: float, label_of) -> list[Detection]:
    """Detections scoring at least `threshold`, boxes mapped from the model input onto the image."""
    found = []
    for x1, y1, x2, y2, score, class_id in rows:
        if score < threshold:
            continue
        box = (
            x1 / placement.scale_x + placement.offset_x,
            y1 / placement.scale_y + placement.offset_y,
            x2 / placement.scale_x + placement.offset_x,
            y2 / placement.scale_y + placement.offset_y,
        )
        found.append(Detection(int(class_id), label_of(int(class_id)), float(score), tuple(map(float, box))))
    return sorted(found, key=lambda d: -d.score)
