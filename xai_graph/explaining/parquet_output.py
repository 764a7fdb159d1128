"""`--format parquet`: one row per image (predictions, explained classes, the maps as uint8) instead of PNG files.

Millions of images make millions of PNGs, which file systems and object stores handle badly; a few Parquet
files hold the same information and load into pandas, Arrow or Spark in one call (`pd.read_parquet(OUTDIR)`).

The folder holds part files `part-{run}-{n}.parquet`, each written whole and renamed into place every
ROWS_PER_PART rows: an interrupted run keeps every finished part, and a rerun skips their images (as
`resume.py` describes; the fingerprint is in the `source_size` and `source_mtime_ns` columns). An image
explained again by a later run (it failed, changed, or with --overwrite) has a row in a newer part too: the
newest row wins (part names sort by run), and --overwrite removes older parts once its run has finished.
The run's settings (model, algorithm, preprocessing) are in each part's schema metadata, key `xai_graph`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np

from xai_graph.errors import XaiGraphError
from xai_graph.explaining.explainer import Explanation
from xai_graph.explaining.render import scale_raw
from xai_graph.explaining.resume import is_done
from xai_graph.explaining.sources import fingerprints
from xai_graph.files import FolderLock, remove_stale_parts, write_atomically

ROWS_PER_PART = 4096
PART_GLOB = "part-*.parquet"


def schema():
    import pyarrow as pa

    score = pa.struct([("id", pa.int64()), ("label", pa.string()), ("score", pa.float64())])
    return pa.schema(
        [
            ("image", pa.string()),  # the path or URI, as predictions.json names it
            ("error", pa.string()),  # why the image failed; null when it was explained
            ("top", pa.list_(score)),  # the top-k classes, best first
            ("explained", pa.list_(score)),  # the classes whose maps are in `maps`, best first
            ("map_classes", pa.list_(pa.int64())),  # the class of each map (empty: one class-agnostic map)
            ("map_shape", pa.list_(pa.int32())),  # [maps, h, w]
            ("maps", pa.list_(pa.uint8())),  # the maps, row-major: np.asarray(row.maps).reshape(row.map_shape)
            ("detections", pa.string()),  # detectors with final detections: JSON list as in predictions.json
            ("not_rendered", pa.list_(score)),  # asked for with --classes, but the head has no map for them
            ("source_size", pa.int64()),  # the image's size and mtime when explained: what a rerun compares
            ("source_mtime_ns", pa.int64()),
        ]
    )


def explanation_row(image: str, explanation: Explanation) -> dict:
    """One image's row (without the source columns): the head's maps, scaled to uint8 as rendering scales them."""
    explained = sorted(explanation.selected, key=lambda c: -c.score)  # as the files: the best class first
    classes = [c.id for c in explained] if explanation.class_wise else [None]
    maps = []
    for class_id in classes:
        saliency = explanation.map_for(class_id)
        maps.append(saliency if saliency.dtype == np.uint8 else scale_raw(saliency))
    stacked = np.stack(maps) if maps else np.zeros((0, 0, 0), np.uint8)
    return {
        "image": image,
        "error": None,
        "top": [vars(c) for c in explanation.top],
        "explained": [vars(c) for c in explained],
        "map_classes": [c for c in classes if c is not None],
        "map_shape": list(stacked.shape),
        "maps": np.ascontiguousarray(stacked).reshape(-1),
        "detections": None if explanation.detections is None else json.dumps([vars(d) for d in explanation.detections]),
        "not_rendered": [vars(c) for c in explanation.not_rendered],
    }


def failed_row(image: str, error: str) -> dict:
    return {
        "image": image,
        "error": error,
        "top": [],
        "explained": [],
        "map_classes": [],
        "map_shape": [],
        "maps": np.zeros(0, np.uint8),
        "detections": None,
        "not_rendered": [],
    }


class ParquetResults:
    """The Parquet counterpart of ResultWriter (`add`, `fail`, `finish`, `records`, `plan`): thread-safe, one
    run per folder (the same lock file)."""

    alpha = None  # no overlays

    def __init__(self, outdir: str | os.PathLike, overwrite: bool = False, settings: dict | None = None):
        try:  # before the folder is made
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise XaiGraphError("--format parquet needs pyarrow: pip install 'xai-graph[ray]'") from exc
        self.outdir = Path(outdir)
        if self.outdir.exists() and not self.outdir.is_dir():
            raise XaiGraphError(f"{self.outdir}: exists and is not a folder")
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.root = self.outdir.resolve()
        self.overwrite = overwrite
        self._folder_lock = FolderLock(self.root).__enter__()
        remove_stale_parts(self.root)
        self._older_parts = sorted(self.root.glob(PART_GLOB))
        self._run = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        self._lock = threading.Lock()
        self._rows: list[dict] = []
        self._parts = 0
        self._metadata = json.dumps(settings or {}).encode()  # the run's settings, in every part
        self.sources: dict[str, dict | None] = {}
        self.records: dict[str, dict] = {}  # this run's images: their error and not_rendered (for the summary)

    def __enter__(self) -> ParquetResults:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._folder_lock.__exit__(None, None, None)

    def plan(self, sources: list) -> tuple[list, int]:
        """(the sources to explain, how many earlier parts already hold)."""
        self.sources.update(fingerprints(list(sources)))
        if self.overwrite or not self._older_parts:
            return list(sources), 0
        done = self._previous_rows()
        todo = [s for s in sources if not is_done(done.get(str(s)), self.sources.get(str(s)), lambda name: True)]
        return todo, len(sources) - len(todo)

    def _previous_rows(self) -> dict[str, dict]:
        import pyarrow.parquet as pq

        rows: dict[str, dict] = {}
        for part in self._older_parts:  # oldest first: newer rows win
            try:
                table = pq.read_table(part, columns=["image", "error", "source_size", "source_mtime_ns"])
            except Exception:  # noqa: BLE001 (an unreadable part: its images are simply done again)
                continue
            for image, error, size, mtime in zip(*(table.column(i).to_pylist() for i in range(4))):
                source = None if size is None else {"size": size, "mtime_ns": mtime}
                rows[image] = {"error": error, "source": source}
        return rows

    # -- rows ------------------------------------------------------------------------
    def add(self, image_path, image, explanation: Explanation, input_size) -> dict:
        return self.add_row(explanation_row(str(image_path), explanation))

    def fail(self, image_path, error: str) -> dict:
        return self.add_row(failed_row(str(image_path), error))

    def add_row(self, row: dict) -> dict:
        fingerprint = self.sources.get(row["image"]) or {}
        row = {**row, "source_size": fingerprint.get("size"), "source_mtime_ns": fingerprint.get("mtime_ns")}
        with self._lock:
            self._rows.append(row)
            self.records[row["image"]] = {"error": row["error"], "not_rendered": row["not_rendered"]}
            if len(self._rows) >= ROWS_PER_PART:
                self._flush()
        return row

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=schema().with_metadata({"xai_graph": self._metadata}))
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        write_atomically(self.root / f"part-{self._run}-{self._parts:05d}.parquet", sink.getvalue().to_pybytes())
        self._parts += 1
        self._rows.clear()

    def finish(self, summary: dict) -> tuple[Path, Path]:
        """Write the last part; with --overwrite, once the run was not interrupted, remove earlier runs' parts."""
        with self._lock:
            self._metadata = json.dumps(summary).encode()
            self._flush()
        if self.overwrite and not summary.get("interrupted"):
            for part in self._older_parts:
                part.unlink(missing_ok=True)
        return self.root, self.root
