"""Run ONNX models in ONNX Runtime or OpenVINO and get outputs by name.

Knows nothing of graph editing. OpenVINO defaults to bf16 on recent CPUs, so
f32 is requested explicitly: comparisons with ONNX Runtime need it.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping

import numpy as np

from xai_graph.errors import XaiGraphError
from xai_graph.formats import RUNTIME_OF, format_of

RUNTIMES = ("onnxruntime", "openvino")


class OnnxRuntimeModel:
    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # Idle ORT threads spin by default, stealing the cores that decode and render in parallel.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, dict(feeds))))


class OpenVinoModel:
    def __init__(
        self, path: str | os.PathLike, device: str = "CPU", precision: str = "f32", threads: int | None = None
    ):
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), device, config)
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.request = self.compiled.create_infer_request()

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer(dict(feeds))
        # An output may carry several tensor names (OpenVINO merges identical
        # computations): answer to all of them.
        return {name: np.asarray(results[output]) for output in self.compiled.outputs for name in output.get_names()}


def open_model(path: str | os.PathLike, runtime: str = "onnxruntime", **options):
    if runtime == "onnxruntime":
        return OnnxRuntimeModel(path, threads=options.get("threads"))
    if runtime == "openvino":
        return OpenVinoModel(path, **options)
    raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def load_refusal(path: str | os.PathLike, runtime: str) -> str | None:
    """Why `runtime` refuses to load (compile) `path`, in one line; None when it accepts. Nothing runs."""
    try:
        if runtime == "onnxruntime":
            OnnxRuntimeModel(path, threads=1)
        else:
            import openvino as ov

            core = ov.Core()
            core.compile_model(core.read_model(str(path)), "CPU")
    except Exception as exc:
        return runtime_message(exc)
    return None


def runtime_message(exc: BaseException) -> str:
    """A runtime's error as one readable line: source locations, C++ signatures and wrappers removed.

    ONNX Runtime writes "[ONNXRuntimeError] : 1 : FAIL : Load model from X failed:/src/file.h:46 void f(...) cause";
    OpenVINO writes "Exception from src/...:84:" and "Check '...' failed at ...:" lines before the cause.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    text = " ".join(lines) or type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"(failed:)?\s*/\S+\.(?:h|cc|cpp):\d+ [^(]*\(.*?\) ", r"\1 ", text)
    return text[:600]


_TITLES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def verify_loads(path: str | os.PathLike) -> None:
    """Refuse a written model that its runtime cannot load (ONNX Runtime for .onnx, OpenVINO for .xml).

    An ONNX model that OpenVINO cannot compile is kept, with a warning: ONNX Runtime users can still run it.
    """
    required = RUNTIME_OF[format_of(path)]
    why = load_refusal(path, required)
    if why:
        raise XaiGraphError(f"{_TITLES[required]} cannot load the result, so nothing was written: {why}")
    if required == "onnxruntime":
        why = load_refusal(path, "openvino")
        if why:
            warnings.warn(f"OpenVINO cannot compile the result ({why}); run it with ONNX Runtime", stacklevel=2)
