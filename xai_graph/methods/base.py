"""The interface every saliency method implements, and the registry of CLI names.

A method only builds the raw float32 map from the target; everything shared
(uint8 scaling, outputs, feature vector, metadata) lives once in `xai_graph.insert`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

import onnx_ir as ir

from xai_graph.errors import XaiGraphError
from xai_graph.graph.analysis import known_dim
from xai_graph.graph.builder import GraphBuilder
from xai_graph.graph.targets import Target


def option(
    default, help: str, flag: str, choices: tuple[str, ...] | None = None, metavar: str | None = None, parse=None
):
    """A method option: its default, and what the command line needs to offer it (flag, help, choices, and
    `parse` for text that is not the value itself, e.g. "topk:5" or "7x7")."""
    return field(
        default=default, metadata={"help": help, "flag": flag, "choices": choices, "metavar": metavar, "parse": parse}
    )


def parse_top_k(text: str) -> int | None:
    """'all' -> None (a map for every class), 'topk:N' -> N."""
    if text == "all":
        return None
    name, _, number = text.partition(":")
    if name != "topk" or not number.isdigit() or int(number) < 1:
        raise ValueError(f"{text!r}: expected 'all' or 'topk:N', e.g. topk:5")
    return int(number)


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W), both at least 1."""
    try:
        first, second = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{text!r}: expected HxW, e.g. 7x7") from None
    if first < 1 or second < 1:
        raise ValueError(f"{text!r}: both sides must be at least 1")
    return first, second


@dataclass(frozen=True)
class Options:
    """What every method accepts; a method with options of its own extends this (one dataclass per method)."""

    top_k: int | None = option(
        None,
        "Class-wise maps for every class, or only for each image's N best (adds saliency_classes).",
        "--classes",
        metavar="all|topk:N",
        parse=parse_top_k,
    )


@dataclass
class Saliency:
    """What a method builds: the raw float map, and for top-k heads the classes of its rows ([B, k] int64)."""

    map: ir.Value
    classes: ir.Value | None = None
    form: str = ""  # how it was computed, recorded in the metadata (e.g. "fused", "cloned tail")
    class_scores: ir.Value | None = None  # detectors: each class's best score over all positions, [B, K]


class SaliencyMethod:
    """Builds a raw saliency map: [B, K, h, w] if `class_wise`, else [B, h, w].

    A new method is one module: a subclass with its names, `build` (and `check`, `output_dims` where the
    defaults do not fit), an `Options` dataclass if it takes options, and `@register_method`.
    """

    algo: ClassVar[str]  # CLI name
    task: ClassVar[str]  # kind of model it explains
    title: ClassVar[str]  # what the docs and `inspect` call it
    class_wise: ClassVar[bool]
    Options: ClassVar[type] = Options

    def __init__(self, options: Options | None = None):
        self.options = options if options is not None else self.Options()

    @classmethod
    def options_from(cls, given: dict) -> Options:
        """This method's Options from keyword options; None means "not given". An option the method does
        not take, given with a value, is refused in one line (it would otherwise be ignored silently)."""
        known = {f.name for f in fields(cls.Options)}
        foreign = sorted(name for name, value in given.items() if name not in known and value not in (None, False))
        if foreign:
            takes = ", ".join(sorted(known)) or "none"
            raise XaiGraphError(f"{cls.title} does not take {', '.join(foreign)} (its options: {takes})")
        return cls.Options(**{name: value for name, value in given.items() if name in known and value is not None})

    def check(self, target: Target) -> None:
        """Raise XaiGraphError where this method cannot explain `target`."""
        if self.options.top_k is not None and not self.class_wise:
            raise XaiGraphError(f"{self.algo} maps are class-agnostic: top-k classes do not apply")

    def output_dims(self, target: Target) -> list:
        """Declared dims of `saliency_map`: static sizes and named symbols where known, else None."""
        batch = known_dim(target.value.shape[0]) if target.value.shape is not None else None
        height, width = target.layout.grid(target.value)
        if not self.class_wise:
            return [batch, height, width]
        return [batch, self.options.top_k or target.num_classes, height, width]

    def explained(self, target: Target) -> list[ir.Value]:
        """The model's values this method reads its map from (recorded as the target in the metadata)."""
        return [target.value]

    def form(self, target: Target) -> str:
        """How the map will be computed for `target`, where a method has several forms ("" otherwise)."""
        return ""

    def repeated_nodes(self, target: Target) -> list[ir.Node]:
        """Nodes of the model that this form runs once per map position (their cost is multiplied by h*w)."""
        return []

    def positions(self, target: Target) -> int | None:
        """h*w of the map, where static."""
        height, width = self.output_dims(target)[-2:]
        return height * width if isinstance(height, int) and isinstance(width, int) else None

    def build(self, builder: GraphBuilder, target: Target) -> Saliency:
        raise NotImplementedError


# (algo, task) -> method class; one CLI name may have one implementation per task.
_REGISTRY: dict[tuple[str, str], type[SaliencyMethod]] = {}


def register_method(cls: type[SaliencyMethod]) -> type[SaliencyMethod]:
    key = (cls.algo, cls.task)
    if key in _REGISTRY:
        raise ValueError(f"{key} registered twice")
    _REGISTRY[key] = cls
    return cls


def algorithms() -> list[str]:
    """CLI names of the registered algorithms, in registration order."""
    return list(dict.fromkeys(algo for algo, _ in _REGISTRY))


def method_for(algo: str, task: str) -> type[SaliencyMethod]:
    if (algo, task) in _REGISTRY:
        return _REGISTRY[(algo, task)]
    if algo not in algorithms():
        raise XaiGraphError(f"unknown algorithm {algo!r}; choose one of {', '.join(algorithms())}")
    raise XaiGraphError(f"algorithm {algo!r} does not support {task} models")


def methods_for_task(task: str) -> list[type[SaliencyMethod]]:
    return [cls for (_, t), cls in _REGISTRY.items() if t == task]


def option_fields() -> list:
    """Every option of every registered method, once per name (the command line offers each as one flag)."""
    found = {}
    for cls in _REGISTRY.values():
        for item in fields(cls.Options):
            found.setdefault(item.name, item)
    return list(found.values())
