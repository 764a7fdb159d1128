"""Run ONNX models in ONNX Runtime or OpenVINO and get outputs by name.

Knows nothing of graph editing. OpenVINO defaults to bf16 on recent CPUs, so
f32 is requested explicitly: comparisons with ONNX Runtime need it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

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
    def __init__(self, path: str | os.PathLike, device: str = "CPU", precision: str = "f32",
                 threads: int | None = None):
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
