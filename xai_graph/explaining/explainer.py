"""Run an instrumented model over images: predictions and saliency maps per image.

`Explainer` owns the runtime session and the preprocessing; it instruments a
model without `saliency_map` on the fly (in a temporary folder). Rendering and
writing files live in `xai_graph.explaining.render` and `xai_graph.explaining.gallery`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import weakref
from dataclasses import asdict, dataclass, field
from typing import NamedTuple
from pathlib import Path

import numpy as np
import onnx_ir as ir

from xai_graph.errors import XaiGraphError
from xai_graph.files import TEMP_PREFIX, scratch_folder
from xai_graph.graph.runnable import check_input_dims
from xai_graph.graph.analysis import known_dim
from xai_graph.graph.io import load_model, save_model
from xai_graph.explaining.model_detections import Detection, find_layout, read_detections, to_image
from xai_graph.graph.openvino_ir import read_ir
from xai_graph.graph.subject import find_subject
from xai_graph.head import DETECTION_CLASS_SCORES, SALIENCY_CLASSES, SALIENCY_MAP, insert
from xai_graph.methods import method_for
from xai_graph.explaining.preprocess import Placement, Preprocessing, read_model_info
from xai_graph.runtime import RUNTIMES, open_model
from xai_graph.formats import is_ir

MULTILABEL_THRESHOLD = 0.5
_INTEGER_TYPES = {ir.DataType.INT64, ir.DataType.INT32, ir.DataType.INT16, ir.DataType.INT8, ir.DataType.UINT8}


@dataclass
class ClassScore:
    id: int
    label: str
    score: float  # probability: softmax of the logits, or the model's own Softmax/Sigmoid output


@dataclass
class Explanation:
    top: list[ClassScore]  # the top-k classes, best first
    selected: list[ClassScore]  # the classes whose maps are rendered (all, for class-agnostic maps: empty)
    saliency: np.ndarray  # [K, h, w] or [h, w]; uint8, or float32 from a --raw head; [k, h, w] for top-k heads
    placement: Placement
    image_shape: tuple[int, ...]
    map_classes: list[int] | None = None  # top-k heads: the class of each row of `saliency`
    detections: list[Detection] | None = None  # detectors with final detections in their outputs
    not_rendered: list[ClassScore] = field(default_factory=list)  # asked for, but the top-k head has no map

    @property
    def class_wise(self) -> bool:
        return self.saliency.ndim == 3

    def map_for(self, class_id: int | None) -> np.ndarray:
        if not self.class_wise:
            return self.saliency
        row = self.map_classes.index(class_id) if self.map_classes is not None else class_id
        return self.saliency[row]


@dataclass
class ModelFacts:
    """What explain needs to know of a model, whichever format it came in."""

    metadata: dict[str, str]
    inputs: dict[str, list[int | None]]  # name -> dims (None: dynamic)
    outputs: dict[str, tuple[tuple[int | None, ...], bool]]  # name -> (dims, integer dtype)


def _static(dim) -> int | None:
    dim = known_dim(dim)
    return dim if isinstance(dim, int) and dim > 0 else None


def _onnx_facts(model: ir.Model) -> ModelFacts:
    graph = model.graph
    return ModelFacts(
        dict(model.metadata_props),
        {
            v.name: [_static(d) for d in v.shape] if v.shape is not None else []
            for v in graph.inputs
            if not v.is_initializer()
        },
        {o.name: (tuple(_static(d) for d in o.shape or ()), o.dtype in _INTEGER_TYPES) for o in graph.outputs},
    )


def _ir_facts(path: Path) -> ModelFacts:
    """Facts of an OpenVINO IR; its Model API `model_info` and the `xai_graph.*` record come from rt_info."""
    model = read_ir(path)
    rt_info = model.get_rt_info()
    metadata = {}
    for section in ("framework", "xai_graph", "model_info"):
        entries = rt_info[section] if section in list(rt_info.keys()) else {}
        entries = entries.astype(dict) if hasattr(entries, "astype") else entries
        for key, value in entries.items():
            name = f"model_info {key}" if section == "model_info" else key
            metadata[name] = value.astype(str) if hasattr(value, "astype") else str(value)

    def dims(port) -> list[int | None]:
        return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]

    outputs = {o.get_any_name(): (tuple(dims(o)), o.get_element_type().is_integral()) for o in model.outputs}
    return ModelFacts(metadata, {i.get_any_name(): dims(i) for i in model.inputs}, outputs)


class ModelOutput(NamedTuple):
    """One image's share of a model run."""

    scores: np.ndarray
    saliency: np.ndarray
    map_classes: np.ndarray | None  # top-k heads only
    detections: np.ndarray | None = None  # [M, 6] x1 y1 x2 y2 score class, model-input pixels


class Explainer:
    """Predictions and saliency maps from one run of an (instrumented) ONNX model.

    >>> explainer = Explainer("model.onnx")               # instruments on the fly if needed
    >>> explanation = explainer.explain([image_bgr])[0]   # OpenCV BGR uint8 images

    Instrumenting on the fly for the predicted classes builds a top-k head (cheaper);
    `full_head=True` keeps a map for every class (evaluation reads maps of other classes).
    """

    def __init__(
        self,
        model: str | os.PathLike,
        runtime: str = "onnxruntime",
        device: str = "CPU",
        algo: str | None = None,
        classes: str = "predicted",
        top_k: int = 5,
        raw: bool = False,
        size: tuple[int, int] | None = None,
        threads: int | None = None,
        box_threshold: float = 0.5,
        precision: str = "f32",
        full_head: bool = False,
        labels: list[str] | None = None,
        **preprocessing,
    ):
        if runtime not in RUNTIMES:
            raise XaiGraphError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        self.source = Path(model)
        if is_ir(self.source):  # it runs in OpenVINO
            self.model_path, self.instrumented_here = self._instrumented_ir(self.source, algo, raw)
            facts, runtime = _ir_facts(self.model_path), "openvino"
        else:
            # Rendering only the predicted classes needs the best few maps only: a top-k head is cheaper.
            head_top_k = max(5, top_k) if classes == "predicted" and not full_head else None
            graph_model, self.model_path, self.instrumented_here = self._instrumented(
                self.source, algo, raw, head_top_k
            )
            facts = _onnx_facts(graph_model)
        self.runtime = runtime
        self.metadata = facts.metadata
        self.info = read_model_info(self.metadata)
        if labels:  # given by the caller: they win over the model's own
            self.info.labels = list(labels)
        self.algo = self.metadata.get("xai_graph.algorithm", algo or "?")
        openvino_options = {"device": device, "precision": precision} if runtime == "openvino" else {}
        self.session = open_model(
            self.model_path, runtime, **openvino_options, **({"threads": threads} if threads else {})
        )
        self.input_name = self.session.input_names[0]
        self.task = self.metadata.get("xai_graph.task", "classification")
        self.scores_name = self.metadata.get("xai_graph.scores") or self.session.output_names[0]
        self.scores_activation = self.metadata.get("xai_graph.scores_activation", "none")
        if self.task == "detection":  # per-class best detection scores: probabilities, several classes at once
            self.scores_name, self.scores_activation = DETECTION_CLASS_SCORES, "Sigmoid"
        self.box_threshold = box_threshold
        self.detection_layout = (
            find_layout(
                {
                    name: (tuple(-1 if d is None else d for d in dims), integer)
                    for name, (dims, integer) in facts.outputs.items()
                }
            )
            if self.task == "detection"
            else None
        )
        self.preprocessing, self.max_batch = self._preprocessing(facts.inputs[self.input_name], size, preprocessing)
        self.class_selection = classes
        self.top_k = top_k
        dims = facts.outputs.get(self.scores_name, ((None,), False))[0]
        self.num_classes: int | None = dims[-1] if dims else None
        if classes not in ("predicted", "all"):  # fail before the run, not once per image
            self.parse_classes(classes, self.num_classes or 2**31)

    # -- set-up ----------------------------------------------------------------
    def _instrumented(
        self, source: Path, algo: str | None, raw: bool, top_k: int | None
    ) -> tuple[ir.Model, Path, bool]:
        """The model with a head: the source itself, or a copy instrumented in a temporary folder."""
        model = load_model(source)
        if SALIENCY_MAP in [o.name for o in model.graph.outputs]:
            if algo and model.metadata_props.get("xai_graph.algorithm") not in (None, algo):
                raise XaiGraphError(
                    f"{source} already has a saliency_map head of another algorithm; "
                    "re-insert it with `xai-graph insert --replace`"
                )
            return model, source, False
        algo = algo or "classwisesaliencymap"
        class_wise = method_for(algo, "classification").class_wise
        try:
            subject = find_subject(model, need_scores=class_wise)
        except XaiGraphError:
            subject = None  # insert says why, in its own words
        # Top-k heads are for class-wise maps of CNN classifiers with more classes than k.
        cnn = subject is not None and subject.task == "classification"
        num_classes = subject.num_classes if cnn else None
        if not (cnn and class_wise) or top_k is None or (num_classes is not None and top_k >= num_classes):
            top_k = None
        model = insert(model, algo, raw=raw, top_k=top_k, check=False)  # save_model checks the written file
        return model, save_model(model, self._scratch() / "instrumented.onnx"), True

    def _instrumented_ir(self, source: Path, algo: str | None, raw: bool) -> tuple[Path, bool]:
        """The IR itself where it has a head, else a copy instrumented (natively, full maps) in a temporary folder."""
        plain = read_ir(source)
        if SALIENCY_MAP in {name for port in plain.outputs for name in port.get_names()}:
            return source, False
        model = insert(plain, algo or "classwisesaliencymap", raw=raw)  # the IR read once, not twice
        return save_model(model, self._scratch() / "instrumented.xml"), True

    def _scratch(self) -> Path:
        """A temporary folder for the instrumented copy: removed on close, at exit, on SIGINT/SIGTERM (the CLI
        turns both into KeyboardInterrupt), and after a kill -9 by the next Explainer."""
        stack = contextlib.ExitStack()
        folder = stack.enter_context(scratch_folder(Path(tempfile.gettempdir()), TEMP_PREFIX))
        self._cleanup = weakref.finalize(self, stack.close)
        return folder

    def _preprocessing(self, dims: list[int | None], size, overrides) -> tuple[Preprocessing, int | None]:
        if len(dims) != 4:
            raise XaiGraphError(f"input '{self.input_name}' is not an image batch [B, C, H, W] or [B, H, W, C]")
        layout = "NHWC" if dims[3] in (1, 3) and dims[1] not in (1, 3) else "NCHW"
        height, width = (dims[1], dims[2]) if layout == "NHWC" else (dims[2], dims[3])
        if size:
            if (width, height) not in ((None, None), size):
                raise XaiGraphError(
                    f"--size {size[0]}x{size[1]}: input '{self.input_name}' is fixed at "
                    f"{width or '?'}x{height or '?'} (WxH); --size is for inputs of dynamic size"
                )
            width, height = size
            check_input_dims(self.input_name, [1, 3, height, width])
        if not width or not height:
            raise XaiGraphError(f"input '{self.input_name}' has a dynamic size; pass --size WxH")
        base = Preprocessing(width=width, height=height, layout=layout)
        flags = {key for key, value in overrides.items() if value is not None}
        self.preprocessing_source = {
            key: "flag" if key in flags else "model" if key in self.info.preprocessing else "default"
            for key in ("mean", "scale", "rgb", "resize")
        }
        base = base.with_overrides(**self.info.preprocessing)
        return base.with_overrides(**overrides), dims[0]

    def preprocessing_record(self) -> dict:
        """The preprocessing used, and where each setting came from (flag, model metadata, default)."""
        return {**asdict(self.preprocessing), "source": self.preprocessing_source}

    @property
    def defaulted(self) -> list[str]:
        """Normalisation settings neither the model nor a flag gave (so defaults were assumed)."""
        return [key for key in ("mean", "scale") if self.preprocessing_source[key] == "default"]

    def close(self) -> None:
        if self.instrumented_here:
            self._cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- running ---------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.width, self.preprocessing.height

    def label(self, class_id: int) -> str:
        return self.info.labels[class_id] if class_id < len(self.info.labels) else str(class_id)

    def run(self, tensors: list[np.ndarray]) -> list[ModelOutput]:
        """Scores and saliency map per image, in batches the model accepts."""
        step = self.max_batch or len(tensors)
        results = []
        for start in range(0, len(tensors), step):
            chunk = tensors[start : start + step]
            batch = np.stack(chunk)
            if self.max_batch and len(chunk) < self.max_batch:  # a static batch: pad, then drop the padding
                batch = np.concatenate([batch, np.repeat(batch[-1:], self.max_batch - len(chunk), axis=0)])
            outputs = self.session({self.input_name: batch})
            classes = outputs.get(SALIENCY_CLASSES, [None] * len(chunk))
            # A detector explained with activationmap has no class scores: no predictions, one map.
            scores = outputs.get(self.scores_name, np.zeros((len(chunk), 0), np.float32))
            scores = scores.reshape(len(scores), -1)  # [B, K, 1, 1] and [B, 1, 1, K] (1x1-conv classifiers) too
            detections = [
                read_detections(outputs, self.detection_layout, i) if self.detection_layout else None
                for i in range(len(chunk))
            ]
            results += [
                ModelOutput(*parts)
                for parts in zip(scores[: len(chunk)], outputs[SALIENCY_MAP][: len(chunk)], classes, detections)
            ]
        return results

    def explain(self, images: list[np.ndarray]) -> list[Explanation]:
        prepared = [self.preprocessing(image) for image in images]
        outputs = self.run([tensor for tensor, _ in prepared])
        return [
            self.describe(output, placement, image.shape)
            for output, (_, placement), image in zip(outputs, prepared, images)
        ]

    def describe(self, output: ModelOutput, placement: Placement, image_shape: tuple[int, ...]) -> Explanation:
        probabilities = self.probabilities(output.scores)
        order = np.argsort(-probabilities, kind="stable")
        as_class = lambda i: ClassScore(int(i), self.label(int(i)), float(probabilities[i]))  # noqa: E731
        top = [as_class(i) for i in order[: self.top_k]]
        selected, not_rendered = [], []
        map_classes = None if output.map_classes is None else [int(c) for c in output.map_classes]
        detections = None
        if output.detections is not None:
            detections = to_image(output.detections, placement, self.box_threshold, self.label)
        if output.saliency.ndim == 3:
            chosen = self.select_classes(probabilities, order)
            if detections and self.class_selection == "predicted":  # the classes that were detected
                chosen = list(dict.fromkeys(d.class_id for d in detections))
            if map_classes is not None:  # a top-k head has maps for its k classes only
                if self.class_selection != "all":
                    not_rendered = [as_class(c) for c in chosen if c not in map_classes]
                chosen = map_classes if self.class_selection == "all" else [c for c in chosen if c in map_classes]
            selected = [as_class(i) for i in chosen]
        return Explanation(
            top, selected, output.saliency, placement, tuple(image_shape), map_classes, detections, not_rendered
        )

    @property
    def multilabel(self) -> bool:
        return self.info.multilabel or self.scores_activation == "Sigmoid"

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        scores = scores.astype(np.float64)
        if self.scores_activation in ("Softmax", "Sigmoid"):
            return scores
        if self.multilabel:
            return 1 / (1 + np.exp(-scores))
        e = np.exp(scores - scores.max())
        return e / e.sum()

    def select_classes(self, probabilities: np.ndarray, order: np.ndarray) -> list[int]:
        choice = self.class_selection
        if choice == "all":
            return list(range(len(probabilities)))
        if choice == "predicted":
            if self.multilabel:
                above = [int(i) for i in order if probabilities[i] >= MULTILABEL_THRESHOLD]
                return above or [int(order[0])]
            return [int(order[0])]
        return self.parse_classes(choice, len(probabilities))

    def parse_classes(self, text: str, num_classes: int) -> list[int]:
        """'3,tabby,7': class ids or label names."""
        by_name = {label: i for i, label in enumerate(self.info.labels)}
        chosen = []
        for item in (t.strip() for t in text.split(",") if t.strip()):
            if item.isdigit() and int(item) < num_classes:
                chosen.append(int(item))
            elif item in by_name or item.replace(" ", "_") in by_name:
                chosen.append(by_name.get(item, by_name.get(item.replace(" ", "_"))))
            else:
                raise XaiGraphError(f"--classes: {item!r} is neither a class id below {num_classes} nor a label")
        return list(dict.fromkeys(chosen))
