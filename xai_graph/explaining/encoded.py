"""Render and encode an image's results without writing them: for workers that do not own the output folder.

`ResultEncoder` is a ResultWriter whose byte sink keeps the files in memory: `ResultWriter.add` renders and
encodes exactly as in the local engine (same code, same bytes), and the record and the (name, bytes) pairs are
handed back for the process that owns the folder to write (`ResumableWriter.add_encoded`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from xai_graph.explaining.explainer import Explanation
from xai_graph.explaining.gallery import DEFAULT_IMAGE_FORMAT, ResultWriter


class ResultEncoder(ResultWriter):
    """Thread-safe: each thread's `encode` collects its own files. `folder` (the caller's scratch folder) only
    holds the writer's lock and an empty journal; nothing else is written there."""

    def __init__(self, folder: Path, alpha: float = 0.5, raw: bool = False, image_format: str = DEFAULT_IMAGE_FORMAT):
        super().__init__(folder, overwrite=True, alpha=alpha, raw=raw, image_format=image_format)
        self._current = threading.local()

    def encode(
        self, image_path, image: np.ndarray, explanation: Explanation, input_size: tuple[int, int]
    ) -> tuple[dict, list[tuple[str, bytes]]]:
        """(record, [(file name, bytes)...]) of one image, as `add` would write them."""
        self._current.files, self._current.record = [], None
        self.add(image_path, image, explanation, input_size)
        return self._current.record, self._current.files

    def _write(self, name: str, data: bytes) -> str:
        taken = {existing for existing, _ in self._current.files}
        stem, suffix = os.path.splitext(name)
        n = 0
        while (f"{stem}-{n}{suffix}" if n else name) in taken:  # two labels sanitised alike: as the writer names them
            n += 1
        name = f"{stem}-{n}{suffix}" if n else name
        self._current.files.append((name, bytes(data)))
        return name

    def _keep(self, record: dict) -> None:
        self._current.record = record
