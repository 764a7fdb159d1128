"""Write explain results into a folder: maps, overlays, predictions.json and index.html.

Files are named `{stem}_{label}_saliency_map.png` / `{stem}_{label}_overlay.jpg`
(class-agnostic maps: `{stem}_saliency_map.png`). Maps are written as the head computed
them: 8-bit grayscale PNGs at their own resolution (7x7 for EfficientNet at 224x224),
covering the model's input; overlays carry them onto the image in colour, as JPEG
(photos; PNG on request: about 8 times slower to encode, more than the model itself
takes on a small CPU). Names are sanitised and checked
to stay inside the folder; each file is written to a temporary name and linked
into place, so nothing is overwritten unless asked and no half-written file is
ever visible.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from xai_graph.errors import XaiGraphError
from xai_graph.explaining.explainer import Explanation
from xai_graph.files import (
    FolderLock,
    check_writes_spare_reads,
    inode,
    remove_stale_parts,
    staged_file,
    write_atomically,
)
from xai_graph.explaining.render import (
    colorize,
    encode_image,
    map_to_image_u8,
    overlay,
    render_size,
    scale_raw,
    to_uint8,
)

PREDICTIONS = "predictions.json"
INDEX = "index.html"
JOURNAL = ".xai-graph-journal.jsonl"  # records not yet in predictions.json (a killed run's, read by the next)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
IMAGE_FORMATS = ("png", "jpg")  # of the overlays; maps are always PNG
DEFAULT_IMAGE_FORMAT = "jpg"


def safe_name(text: str, limit: int = 80) -> str:
    """A file-name fragment: letters, digits, '.', '_' and '-' only; no leading dots, never empty."""
    cleaned = _UNSAFE.sub("_", text).strip("._-")[:limit].strip("._-")
    return cleaned or "unnamed"


class ResultWriter:
    """Collects results for one output folder; thread-safe, so rendering can run in a pool.

    It locks the folder for its life (one run per folder), and keeps every record: those of
    earlier runs (predictions.json, and the journal a killed run left), and each new one, appended
    to the journal as soon as its files are written, so that even a kill -9 loses no record.
    Input files (`protected`) are never replaced, even with `overwrite`.
    """

    def __init__(
        self,
        outdir: str | os.PathLike,
        overwrite: bool = False,
        alpha: float = 0.5,
        raw: bool = False,
        image_format: str = DEFAULT_IMAGE_FORMAT,
        protected: Iterable[Path] = (),
    ):
        if image_format not in IMAGE_FORMATS:
            raise XaiGraphError(f"unknown image format {image_format!r}; choose one of {', '.join(IMAGE_FORMATS)}")
        self.ext = image_format
        self.outdir = Path(outdir)
        if self.outdir.exists() and not self.outdir.is_dir():
            raise XaiGraphError(f"{self.outdir}: exists and is not a folder")
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.root = self.outdir.resolve()
        self.overwrite, self.alpha, self.raw = overwrite, alpha, raw
        self.protected = {key for key in map(inode, protected) if key is not None}
        check_writes_spare_reads([self.root / PREDICTIONS, self.root / INDEX, self.root / JOURNAL], protected)
        self._lock = threading.Lock()
        self._claimed: set[Path] = set()
        self._folder_lock = FolderLock(self.root).__enter__()
        self._release = weakref.finalize(self, self._folder_lock.__exit__)
        remove_stale_parts(self.root)
        self.records: dict[str, dict] = self._previous_records()
        self._journal = open(self.root / JOURNAL, "a")  # noqa: SIM115 (open for the writer's life)

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the folder (the journal stays until `finish` has written predictions.json)."""
        if not self._journal.closed:
            self._journal.close()
        self._release()

    def _previous_records(self) -> dict[str, dict]:
        records = {}
        try:
            previous = json.loads((self.root / PREDICTIONS).read_text())
            records = {r["image"]: r for r in previous.get("images", [])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        try:  # records a killed run wrote after its last predictions.json: newer, so they win
            for line in (self.root / JOURNAL).read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    record = json.loads(line)
                    records[record["image"]] = record
        except OSError:
            pass
        return records

    def _keep(self, record: dict) -> None:
        with self._lock:
            self.records[record["image"]] = record
            if not self._journal.closed:
                self._journal.write(json.dumps(record) + "\n")
                self._journal.flush()

    # -- files -------------------------------------------------------------------
    def _target(self, name: str) -> Path:
        path = self.root / name
        if path.parent != self.root or name in (".", ".."):  # sanitising makes this impossible; checked all the same
            raise XaiGraphError(f"refusing to write outside {self.root}: {name!r}")
        return path

    def _taken(self, path: Path) -> bool:
        """A name this run may not use: already written by it, an input's, or a link (never followed)."""
        return path in self._claimed or path.is_symlink() or inode(path) in self.protected

    def _write(self, name: str, data: bytes) -> str:
        """Write `data` under `name`, or `name-1`, `name-2`... where it exists and overwriting is off (or the
        file there is an input)."""
        stem, suffix = os.path.splitext(name)
        tmp = staged_file(self.root, data)
        try:
            for n in range(10_000):
                path = self._target(f"{stem}-{n}{suffix}" if n else name)
                with self._lock:
                    if self._taken(path):
                        continue
                    if self.overwrite:
                        os.replace(tmp, path)
                    else:
                        try:
                            os.link(tmp, path)  # fails if the name exists: never overwrites
                        except FileExistsError:
                            continue
                    self._claimed.add(path)
                    return path.name
            raise XaiGraphError(f"too many files named {name} in {self.root}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _write_image(self, name: str, image: np.ndarray) -> str:
        try:
            data = encode_image(image, os.path.splitext(name)[1])
        except (ValueError, cv2.error) as exc:
            raise XaiGraphError(f"could not encode {name}: {exc}") from exc
        return self._write(name, data)

    # -- results -----------------------------------------------------------------
    def add(self, image_path: Path, image: np.ndarray, explanation: Explanation, input_size: tuple[int, int]) -> dict:
        """Render and write the maps of one image: `image` as decoded (the placement refers to it), or already
        shrunk to its render size (`display_image`), which holds less memory while it waits.

        If writing fails half-way (a full disk), the files already written for this image are removed: an image
        has all its files and a record, or neither."""
        files: list[str] = []
        try:
            return self._add(image_path, image, explanation, input_size, files)
        except BaseException:
            for name in files:
                with contextlib.suppress(OSError):
                    (self.root / name).unlink()
            raise

    def _add(
        self,
        image_path: Path,
        image: np.ndarray,
        explanation: Explanation,
        input_size: tuple[int, int],
        files: list[str],
    ) -> dict:
        stem = safe_name(image_path.stem)
        decoded_shape = explanation.image_shape
        size = render_size(decoded_shape)
        shown = display_image(image, decoded_shape)
        files.append(self._write_image(f"{stem}_image.jpg", shown))
        explained = sorted(explanation.selected, key=lambda c: -c.score)  # the best class's overlay first
        targets = [(c.id, c.label) for c in explained] if explanation.class_wise else [(None, None)]
        overlays = []
        for class_id, label in targets:
            saliency = explanation.map_for(class_id)
            if self.raw:
                files.append(self._write_npy(f"{stem}{_part(class_id, label)}_saliency_map.npy", saliency))
            if saliency.dtype != np.uint8:  # a float head's raw map: scaled per map, as the uint8 head does
                saliency = to_uint8(scale_raw(saliency))
            # The map as the head computed it (a few dozen bytes): a full-size JET copy of a 7x7 map cost more
            # to encode than the model took to run, and the overlay already shows it on the image in colour.
            files.append(self._write_image(f"{stem}{_part(class_id, label)}_saliency_map.png", saliency))
            resized, inside = map_to_image_u8(saliency, explanation.placement, input_size, decoded_shape, size)
            blended = overlay(shown, colorize(resized), self.alpha, inside)
            if explanation.detections:
                boxes = [d for d in explanation.detections if class_id is None or d.class_id == class_id]
                draw_detections(blended, boxes, size[0] / decoded_shape[1])
            files.append(self._write_image(f"{stem}{_part(class_id, label)}_overlay.{self.ext}", blended))
            overlays.append(files[-1])
        record = {
            "image": str(image_path),
            "top": [vars(c) for c in explanation.top],
            "explained": [vars(c) for c in explained],
            "files": files,
            "error": None,
        }
        if explanation.class_wise:  # which overlay shows which class, for the gallery's captions
            record["overlays"] = [{**vars(c), "file": f} for c, f in zip(explained, overlays)]
        if explanation.detections is not None:
            record["detections"] = [vars(d) for d in explanation.detections]
        if explanation.not_rendered:  # asked for with --classes, but the head has maps for its top k only
            record["not_rendered"] = [vars(c) for c in explanation.not_rendered]
        self._keep(record)
        return record

    def _write_npy(self, name: str, array: np.ndarray) -> str:
        import io

        buffer = io.BytesIO()
        np.save(buffer, array)
        return self._write(name, buffer.getvalue())

    def fail(self, image_path: Path, error: str) -> dict:
        record = {"image": str(image_path), "top": [], "explained": [], "files": [], "error": error}
        self._keep(record)
        return record

    def finish(self, summary: dict) -> tuple[Path, Path]:
        """Write predictions.json and index.html (both replaced atomically: they index the folder, every run's
        records included), then drop the journal they now contain."""
        with self._lock:
            records = sorted(self.records.values(), key=lambda r: r["image"])  # stable, whatever finished first
        predictions = {**summary, "images": records}
        json_path = write_atomically(self.root / PREDICTIONS, json.dumps(predictions, indent=2).encode())
        html_path = write_atomically(self.root / INDEX, gallery_html(predictions).encode())
        with self._lock:
            self._journal.close()
            with contextlib.suppress(OSError):
                (self.root / JOURNAL).unlink()
        return json_path, html_path


def display_image(image: np.ndarray, decoded_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The image at the size it is rendered at (an image already at that size is returned as is)."""
    size = render_size(decoded_shape or image.shape)
    return image if image.shape[1::-1] == size else cv2.resize(image, size, interpolation=cv2.INTER_AREA)


BOX_COLOUR = (255, 255, 255)  # BGR: white, with a black outline, readable over any JET colour


def draw_detections(image: np.ndarray, detections: list, scale: float) -> None:
    """Boxes (image pixels, scaled to the rendered size) with their label and score, drawn in place.

    The best detection is drawn last, so that it stays on top where boxes overlap.
    """
    for d in sorted(detections, key=lambda d: d.score):
        x1, y1, x2, y2 = (int(round(v * scale)) for v in d.box)
        cv2.rectangle(image, (x1, y1), (x2, y2), (0, 0, 0), 3)
        cv2.rectangle(image, (x1, y1), (x2, y2), BOX_COLOUR, 1)
        text = f"{d.label} {d.score:.2f}"
        cv2.putText(image, text, (x1 + 2, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3)
        cv2.putText(image, text, (x1 + 2, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, BOX_COLOUR, 1)


def _part(class_id: int | None, label: str | None) -> str:
    return "" if class_id is None else "_" + safe_name(label or str(class_id))


# OpenCV's JET as a CSS gradient: the legend of every overlay (low = blue, high = red).
JET_LEGEND = (
    '<div class="legend"><span>low</span><div class="jet"></div><span>high</span> saliency (JET colour map)</div>'
)
JET_CSS = (
    ".legend { display: flex; align-items: center; gap: 0.5em; font-size: 0.85em; margin: 0.5em 0; }\n"
    ".jet { width: 240px; height: 12px; border: 1px solid #999; background: linear-gradient(to right, "
    "#00007f, #0000ff, #007fff, #00ffff, #7fff7f, #ffff00, #ff7f00, #ff0000, #7f0000); }\n"
)


def _figure(file: str, caption: str) -> str:
    return (
        f'<figure><img src="{html.escape(file)}" alt="{html.escape(file)}" loading="lazy">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _image_section(record: dict) -> str:
    name = html.escape(Path(record["image"]).name)
    if record["error"]:
        return f'<section class="failed"><h2>{name}</h2><p>failed: {html.escape(record["error"])}</p></section>'
    explained = {c["id"] for c in record["explained"]}
    top = "".join(
        f"<li{' class=explained' if c['id'] in explained else ''}>{html.escape(c['label'])} "
        f"<span>{c['score']:.3f}</span>{' &#9733; explained' if c['id'] in explained else ''}</li>"
        for c in record["top"]
    )
    figures = [_figure(f, "image") for f in record["files"] if f.endswith("_image.jpg")]
    if "overlays" in record:  # best score first, each captioned with its class and score
        figures += [
            _figure(o["file"], f"{html.escape(o['label'])} <b>{o['score']:.3f}</b>")
            for o in sorted(record["overlays"], key=lambda o: -o["score"])
        ]
    else:  # a class-agnostic map (or a record from an older run)
        figures += [_figure(f, html.escape(f)) for f in record["files"] if "_overlay." in f]
    missing = ", ".join(html.escape(c["label"]) for c in record.get("not_rendered", []))
    note = f"<p class=note>no map in this head for: {missing}</p>" if missing else ""
    return f"<section><h2>{name}</h2><ol>{top}</ol>{note}<div class=figs>{''.join(figures)}</div></section>"


def gallery_html(predictions: dict) -> str:
    """A self-contained page (relative links only) that works from the file system."""
    rows = [_image_section(record) for record in predictions["images"]]
    title = html.escape(f"xai-graph: {predictions.get('model', '')} ({predictions.get('algorithm', '')})")
    preprocessing = predictions.get("preprocessing")
    used = f"<p>Preprocessing: {html.escape(json.dumps(preprocessing))}</p>" if preprocessing else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}
section {{ background: white; border: 1px solid #ddd; border-radius: 6px; padding: 0.8em; margin-bottom: 1em; }}
section.failed {{ border-color: #c33; }}
.figs {{ display: flex; flex-wrap: wrap; gap: 0.8em; }}
figure {{ margin: 0; }} img {{ max-width: 360px; max-height: 360px; display: block; }}
figcaption {{ font-size: 0.8em; color: #555; }} ol span {{ color: #777; }} li.explained {{ font-weight: bold; }}
.note {{ color: #a60; font-size: 0.85em; }}
{JET_CSS}</style></head><body>
<h1>{title}</h1>
<p>Overlays: red = where the model looked. Scores are probabilities; &#9733; marks the classes whose maps are
shown, best first.</p>
{JET_LEGEND}
{used}
{"".join(rows)}
</body></html>
"""
