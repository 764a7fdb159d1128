"""A model file, ONNX or OpenVINO IR, behind one handle: what reading it involves is decided here.

`inspect` (`report.describe`) and `bench` open a path through `ModelFile`: the graph the find step
analyses (an onnx-ir model; an IR's mirror), the model in its own format, and its inputs. (`insert`
reads a path the same way, with `read_ir` / `to_ir`, since it edits a copy of what it reads.)
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import onnx_ir as ir

from xai_graph.formats import IR, format_of
from xai_graph.graph.analysis import known_dim
from xai_graph.graph.io import load_model
from xai_graph.graph.openvino_ir import Mirror, read_ir


class ModelFile:
    """A model on disk; each view is read once, on first use."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.format = format_of(self.path)

    @property
    def is_ir(self) -> bool:
        return self.format == IR

    @cached_property
    def native(self):
        """The model as its format has it: an onnx-ir model, or an `openvino.Model`."""
        return read_ir(self.path) if self.is_ir else load_model(self.path)

    @cached_property
    def graph(self) -> ir.Model:
        """What the find step reads: the onnx-ir model, or the IR's mirror (one node per OpenVINO operation)."""
        return Mirror(self.native).ir_model if self.is_ir else self.native

    @property
    def opset(self) -> int | None:
        """The ONNX opset (None for an IR, whose operations carry their own)."""
        return None if self.is_ir else self.native.opset_imports.get("", 0)

    def first_input(self) -> tuple[str, list[int | None]]:
        """The image input's name and dims (None where not static)."""
        if self.is_ir:
            port = self.native.inputs[0]
            return port.get_any_name(), [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        value = next(v for v in self.native.graph.inputs if not v.is_initializer())
        return value.name, [d if isinstance(d := known_dim(dim), int) else None for dim in value.shape]
