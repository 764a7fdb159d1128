"""A model's format, decided here and nowhere else: OpenVINO IR or ONNX.

A path is OpenVINO IR when it ends with `.xml` (its weights are the `.bin` beside it) and ONNX
otherwise (`.onnx`, with external data in files its tensors name); an object is IR when it is an
`openvino.Model`, ONNX when it is an `onnx.ModelProto` or an onnx-ir model. Every part of the
library asks these functions, so no two commands can disagree on what a file is.
"""

from __future__ import annotations

import os
from pathlib import Path

from xai_graph.errors import XaiGraphError

ONNX, IR = "onnx", "ir"
SUFFIXES = {".onnx": ONNX, ".xml": IR}
RUNTIME_OF = {ONNX: "onnxruntime", IR: "openvino"}  # the runtime a written model must load in


def format_of(model) -> str:
    """ONNX or IR, for a path or an in-memory model."""
    if isinstance(model, (str, os.PathLike)):
        return IR if Path(model).suffix == ".xml" else ONNX
    return IR if type(model).__module__.startswith("openvino") else ONNX


def is_ir(model) -> bool:
    return format_of(model) == IR


def companion_files(path: str | os.PathLike) -> list[Path]:
    """Files a model at `path` is written with beside it: the IR's `.bin`, or the ONNX external data file."""
    path = Path(path)
    return [path.with_suffix(".bin")] if is_ir(path) else [Path(f"{path}.data")]


def output_for(
    model: str | os.PathLike, output: str | os.PathLike | None = None, requested: str | None = None
) -> tuple[Path, str]:
    """Where and in which format `insert` writes the rewrite of the model file `model`.

    An IR is rewritten as IR (nothing converts IR back to ONNX); an ONNX model is written as ONNX
    unless IR is requested or the output ends with .xml. Without `output`: `<model>_xai.onnx|.xml`.
    """
    model = Path(model)
    asked = SUFFIXES.get(Path(output).suffix) if output is not None else None
    chosen = requested or (IR if is_ir(model) else asked or ONNX)
    if is_ir(model) and (chosen == ONNX or (output is not None and asked != IR)):
        raise XaiGraphError("an OpenVINO IR is rewritten as IR: write to OUT.xml (there is no way back to ONNX)")
    default_suffix = ".xml" if chosen == IR else ".onnx"
    path = Path(output) if output is not None else model.with_name(f"{model.stem}_xai{default_suffix}")
    if asked is None and output is not None:
        raise XaiGraphError(f"{path}: the output must end with .onnx (ONNX) or .xml (OpenVINO IR)")
    if chosen != SUFFIXES[path.suffix]:
        raise XaiGraphError(f"{path}: the IR format is written to OUT.xml (and OUT.bin)")
    return path, chosen
