"""DetClassProbabilityMap for single-stage detectors (OTX semantics).

Per level, the class scores [B, A*K, h_l, w_l] are maxed over the A anchors,
resized bilinearly to one size (the middle level's by default), averaged over
levels, and turned into probabilities over classes: softmax (default, as OTX;
skipped for K = 1), sigmoid, or none. Where a level holds blocks of P channels
per anchor (YOLOv5: 4 box, objectness, K classes), only the class channels are
read; objectness is no class. Softmax class maps (SSD) carry a background
channel: it takes part in the softmax and is then dropped from the maps.

Beside the maps the head outputs `detection_class_scores [B, K]`: each class's best
score over every level, position and anchor, with the detector's own activation,
which is what `explain` ranks and selects classes by.
"""

from __future__ import annotations

from dataclasses import dataclass

from xai_graph.errors import XaiGraphError
from xai_graph.graph.analysis import known_dim
from xai_graph.graph.builder import GraphBuilder, static_dim
from xai_graph.graph.detection import DetectorClassMaps, Level
from xai_graph.methods.base import Options, Saliency, SaliencyMethod, option, parse_size, register_method

DET_SCORES = ("softmax", "sigmoid", "none")
BACKGROUNDS = ("auto", "first", "last", "none")


@dataclass(frozen=True)
class DetectorOptions(Options):
    det_score: str = option(
        "softmax",
        "Detectors: how DetClassProbabilityMap turns the averaged scores into probabilities.",
        "--det-score",
        choices=DET_SCORES,
    )
    map_size: tuple[int, int] | None = option(
        None, "Detectors: map size [default: the middle level's].", "--map-size", metavar="HxW", parse=parse_size
    )
    background: str = option(
        "auto",
        "Detectors: the background channel of softmax class maps, dropped from the maps "
        "(auto: last for softmax class maps, as OTX/mmdet; none for sigmoid ones).",
        "--background",
        choices=BACKGROUNDS,
    )


@register_method
class DetClassProbabilityMap(SaliencyMethod):
    algo = "classwisesaliencymap"
    task = "detection"
    title = "DetClassProbabilityMap"
    class_wise = True
    Options = DetectorOptions

    def check(self, target: DetectorClassMaps) -> None:
        super().check(target)
        if self.options.det_score not in DET_SCORES:
            raise XaiGraphError(
                f"unknown detection score {self.options.det_score!r}; choose one of {', '.join(DET_SCORES)}"
            )
        if self.options.top_k is not None:
            raise XaiGraphError("top-k maps are not available for detectors yet")
        if self.options.background not in BACKGROUNDS:
            raise XaiGraphError(
                f"unknown background {self.options.background!r}; choose one of {', '.join(BACKGROUNDS)}"
            )

    def background(self, target: DetectorClassMaps) -> str:
        if self.options.background != "auto":
            return self.options.background
        return "last" if target.activation == "Softmax" else "none"

    def classes(self, target: DetectorClassMaps) -> int:
        """Rows of the map: the class map's channels per anchor, less the background channel."""
        return target.num_classes - (self.background(target) != "none")

    def map_size(self, target: DetectorClassMaps) -> tuple:
        if self.options.map_size is not None:
            return self.options.map_size
        middle = target.middle.value
        return static_dim(middle, 2), static_dim(middle, 3)

    def explained(self, target: DetectorClassMaps) -> list:
        return [level.value for level in target.levels]

    def output_dims(self, target: DetectorClassMaps) -> list:
        height, width = self.map_size(target)
        return [known_dim(target.middle.value.shape[0]), self.classes(target), height, width]

    def build(self, b: GraphBuilder, target: DetectorClassMaps) -> Saliency:
        k = target.num_classes
        height, width = self.map_size(target)
        if height is None or width is None:  # a dynamic middle level: its run-time size
            height, width = b.dim(target.middle.value, 2), b.dim(target.middle.value, 3)
        per_level, best_per_level = [], []
        for level in target.levels:
            grouped = self._class_scores(b, level, k)
            scores = b.reduce("ReduceMax", grouped, [1], keepdims=False)
            if (static_dim(level.value, 2), static_dim(level.value, 3)) != (height, width):
                scores = b.resize_bilinear(scores, height, width)
            per_level.append(scores)
            best_per_level.append(self._best_scores(b, target, grouped))
        total = per_level[0]
        for scores in per_level[1:]:
            total = b.op("Add", total, scores)
        mean = b.op("Mul", total, b.scalar(1.0 / len(per_level)))  # [B, K, h, w]
        if self.options.det_score == "softmax" and k > 1:
            mean = b.softmax(mean, axis=1, rank=4)
        elif self.options.det_score == "sigmoid":
            mean = b.op("Sigmoid", mean)
        best = best_per_level[0] if len(best_per_level) == 1 else b.op("Max", *best_per_level)
        # Monotonic: the sigmoid of the best logit is the best probability. A graph without a score activation
        # (BlazeFace leaves it to post-processing) gets the one asked for with det_score="sigmoid".
        if target.activation == "Sigmoid" or (target.activation is None and self.options.det_score == "sigmoid"):
            best = b.op("Sigmoid", best)
        return Saliency(
            self._without_background(b, target, mean), class_scores=self._without_background(b, target, best)
        )

    @staticmethod
    def _class_scores(b: GraphBuilder, level: Level, k: int):
        """[B, A, K, h, w]: the level's class channels, grouped by anchor."""
        x = level.value
        if level.channels is not None:  # class channels cut out of a conv shared with boxes (YOLOv8)
            x = b.op("Slice", x, b.ints([level.channels[0]]), b.ints([level.channels[1]]), b.ints([1]))
        h, w = b.dim(level.value, 2), b.dim(level.value, 3)
        if level.per_anchor is None:  # anchor-major: A blocks of K classes
            return b.reshape(x, 0, level.anchors, k, h, w)
        # Blocks of P channels per anchor, classes at an offset (YOLOv5: 4 box, objectness, K classes).
        blocks = b.reshape(x, 0, level.anchors, level.per_anchor, h, w)
        start = level.class_offset
        return b.op("Slice", blocks, b.ints([start]), b.ints([start + k]), b.ints([2]))

    def _best_scores(self, b: GraphBuilder, target: DetectorClassMaps, grouped) -> object:
        """[B, K]: the best score of each class at one level, over anchors and positions."""
        if target.activation == "Softmax":  # probabilities exist per position only
            grouped = b.softmax(grouped, axis=2, rank=5)
        return b.reduce("ReduceMax", grouped, [1, 3, 4], keepdims=False)

    def _without_background(self, b: GraphBuilder, target: DetectorClassMaps, x):
        background = self.background(target)
        if background == "none":
            return x
        first = 1 if background == "first" else 0
        return b.op("Slice", x, b.ints([first]), b.ints([first + self.classes(target)]), b.ints([1]))
