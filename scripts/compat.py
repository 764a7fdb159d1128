"""Compatibility matrix: every method on real exports, in ONNX Runtime and OpenVINO, against references.

    python scripts/compat_export.py --out CACHE      # in the export venv (torch + timm, transformers, ...)
    python scripts/compat.py CACHE [--markdown OUT.md] [--json OUT.json] [--only TEXT]

Each model x method row is one of:
- "equal": the head's raw map equals a reference computed outside xai-graph within 1e-4 of the map's scale,
  the uint8 map within 1 LSB, in ONNX Runtime and in OpenVINO (f32); the original outputs are bit-identical;
  the map has the grid the exporter's own model has; batch 1 == batch 3 where the batch is dynamic;
- "refused": `insert` declined in one line (the reason is in the row);
- "WRONG" or "CRASH": a failure of xai-graph (the script exits 1).

References (tests/reference.py, numpy, no xai-graph code): CNN maps from the probed target and the original
graph's tail cut by onnx's extractor and run on masked maps; ViT Recipro-CAM from the original last block and
head run on masked token sequences (the OpenVINO XAI definition); DetClassProbabilityMap from the probed
class-logit maps named by the exporter (OTX semantics).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import reference  # noqa: E402
import xai_graph  # noqa: E402
from xai_graph.errors import XaiGraphError  # noqa: E402
from xai_graph.runtime import open_model  # noqa: E402

ALGOS = ("activationmap", "eigencam", "classwisesaliencymap")
CLASS_WISE = {"classwisesaliencymap": True, "activationmap": False, "eigencam": False}


def _image(shape: list[int], batch: int, seed: int = 0) -> np.ndarray:
    """Smooth blobs plus noise, deterministic: closer to a photo than white noise."""
    rng = np.random.default_rng(seed)
    _, c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    images = []
    for _ in range(batch):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
        images.append(np.stack([blob * rng.uniform(0.5, 2) + 0.2 * rng.standard_normal(blob.shape) for _ in range(c)]))
    return np.asarray(images, dtype=np.float32)


class Row(dict):
    """family, source, name, exporter, method, form, status, detail, ratio, insert_s."""

    @classmethod
    def start(cls, entry: dict, method: str) -> Row:
        """An empty row for one model and method."""
        return cls(
            family=entry.get("family", ""),
            source=entry.get("source", ""),
            name=entry["name"],
            exporter=entry.get("exporter", ""),
            method=method,
            form="",
            status="",
            detail="",
            ratio="",
            insert_s="",
        )


def _pre_activation(model: onnx.ModelProto, output: str) -> str:
    for node in model.graph.node:
        if output in node.output and node.op_type in ("Softmax", "Sigmoid", "LogSoftmax"):
            return node.input[0]
    return output


def _to_nchw(f: np.ndarray, layout: str) -> np.ndarray:
    if layout == "NHWC":
        return f.transpose(0, 3, 1, 2)
    if layout in ("NLC", "NCL"):
        f = f.transpose(0, 2, 1) if layout == "NLC" else f
        side = int(round(np.sqrt(f.shape[2])))
        return f.reshape(f.shape[0], f.shape[1], side, side)
    return f


def _from_nchw_masked(masked: np.ndarray, layout: str) -> np.ndarray:
    """[N, C, h, w] masked maps back to the target's own layout, for the original tail."""
    if layout == "NHWC":
        return masked.transpose(0, 2, 3, 1)
    if layout in ("NLC", "NCL"):
        flat = masked.reshape(masked.shape[0], masked.shape[1], -1)
        return flat.transpose(0, 2, 1) if layout == "NLC" else flat
    return masked


def cnn_reference(path: Path, target: str, layout: str, algo: str, feeds: dict, work: Path):
    proto = onnx.load(str(path))
    probe = reference.with_outputs(path, [target], work / "probe.onnx")
    f = _to_nchw(open_model(probe)(feeds)[target], layout)
    if algo != "classwisesaliencymap":
        return _feature_maps(f, algo)
    logits = _pre_activation(
        proto, proto.graph.output[0].name if len(proto.graph.output) == 1 else next(o.name for o in proto.graph.output)
    )
    tail = reference.onnx_tail(path, target, logits, work / "tail.onnx")
    return reference.recipro_cam(f, lambda masked: tail(_from_nchw_masked(masked, layout))), _caveat(f, algo)


def _feature_maps(f: np.ndarray, algo: str):
    expected = reference.activation_map(f) if algo == "activationmap" else reference.eigencam(f)
    return expected, _caveat(f, algo)


def _caveat(f: np.ndarray, algo: str) -> str | None:
    """Why a map cannot be compared in uint8: random weights can leave the features without signal (LeViT's
    last tokens are equal at every position to 1e-6), and the uint8 scaling then magnifies float rounding in any
    runtime; EigenCAM's component is not defined where the first two singular values are equal."""
    x = f.astype(np.float64).reshape(f.shape[0], f.shape[1], -1).transpose(0, 2, 1)  # [B, hw, C]
    centred = x - x.mean(axis=1, keepdims=True)
    if np.abs(centred).max() < 1e-5 * np.abs(x).max():
        return "features equal at every position (random weights): raw to 1e-4 of max(1, scale), uint8 not compared"
    if algo == "eigencam":
        values = np.linalg.svd(centred, compute_uv=False)
        if (values[:, 0] - values[:, 1]).min() < 1e-3 * values[:, 0].max():
            return "first two principal components tied: raw to 1e-4 of max(1, scale), uint8 not compared"
    return None


def vit_reference(path: Path, tokens: str, extra: int, grid: list[int], feeds: dict, work: Path) -> np.ndarray:
    """ViT Recipro-CAM by definition: the last block with LN1(x) and x masked per patch, then the head."""
    import onnxruntime as ort

    proto = onnx.load(str(path))
    norm = next(n for n in proto.graph.node if n.op_type == "LayerNormalization" and tokens in n.input)
    logits = _pre_activation(proto, proto.graph.output[0].name)
    probe = reference.with_outputs(path, [tokens, norm.output[0]], work / "probe.onnx")
    values = open_model(probe)(feeds)
    x, normalised = values[tokens], values[norm.output[0]]
    full = work / "block.full.onnx"
    onnx.save(proto, str(full))
    # The graph inputs go in too: dynamo's exports read the batch size from the image inside the block.
    onnx.utils.extract_model(
        str(full), str(work / "block.onnx"), [tokens, norm.output[0], *feeds], [logits], check_model=False
    )
    session = ort.InferenceSession(str(work / "block.onnx"), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    h, w = grid
    masks = np.ones((h * w, extra + h * w), np.float32)
    masks[:, extra:] = reference.position_masks(h, w, "gaussian").reshape(h * w, -1)
    maps = []
    for i in range(x.shape[0]):
        image = {name: value[i : i + 1] for name, value in feeds.items() if name in wanted}
        scores = [
            session.run(
                [logits],
                {
                    tokens: x[i : i + 1] * m[None, :, None],
                    norm.output[0]: normalised[i : i + 1] * m[None, :, None],
                    **image,
                },
            )[0][0]
            for m in masks
        ]
        maps.append(np.asarray(scores, np.float64).T.reshape(-1, h, w))
    return np.stack(maps)


def detector_reference(path: Path, entry: dict, feeds: dict, work: Path) -> np.ndarray:
    import cv2

    names = [level["value"] for level in entry["levels"]]
    probe = reference.with_outputs(path, names, work / "probe.onnx")
    values = open_model(probe)(feeds)
    k = entry["num_classes"]
    middle = entry["levels"][len(names) // 2]["size"]
    resized = []
    for level in entry["levels"]:
        x = values[level["value"]]
        b, _, h, w = x.shape
        a, p, o = level["anchors"], level["channels_per_anchor"], level["class_offset"]
        per_class = x.reshape(b, a, p, h, w)[:, :, o : o + k].max(axis=1)
        resized.append(
            np.stack(
                [
                    [cv2.resize(m, (middle[1], middle[0]), interpolation=cv2.INTER_LINEAR) for m in img]
                    for img in per_class.astype(np.float32)
                ]
            )
        )
    mean = np.mean(resized, axis=0).astype(np.float64)
    if k == 1:
        return mean
    e = np.exp(mean - mean.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _latency(path: Path, feeds: dict, rounds: int = 10) -> float:
    run = open_model(path)
    run(feeds)
    times = []  # a rough figure: the best of a few runs on a shared machine
    for _ in range(rounds):
        start = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - start)
    return float(np.min(times))


def check(entry: dict, cache: Path, algo: str, work: Path) -> Row:
    path = cache / entry["file"]
    row = Row.start(entry, algo)
    start = time.perf_counter()
    options, notes = {}, set()
    try:
        raw_model = xai_graph.insert(path, algo, raw=True)
    except XaiGraphError as exc:
        if "--brute-force to accept" not in str(exc):
            return Row(row, status="refused", detail=str(exc))
        # Refused for its cost: what --brute-force writes is checked as well.
        options = {"brute_force": True}
        notes.add(f"only with --brute-force ({str(exc).split(' would ')[1].split(':')[0]})")
        try:
            raw_model = xai_graph.insert(path, algo, raw=True, **options)
        except XaiGraphError as forced:
            return Row(row, status="refused", detail=f"{exc}; with --brute-force: {forced}")
    row["insert_s"] = f"{time.perf_counter() - start:.2f}"
    u8_model = xai_graph.insert(path, algo, **options)
    raw = xai_graph.save_model(raw_model, work / "raw.onnx")
    u8 = xai_graph.save_model(u8_model, work / "u8.onnx")
    meta = dict(raw_model.metadata_props)
    row["form"] = meta["xai_graph.method"]
    name, shape = next(iter(entry["inputs"].items()))
    batches = (1, 3) if entry.get("batch_dynamic") else (1,)
    for batch in batches:
        feeds = {name: _image(shape, batch)}
        expected, caveat = _expected(entry, meta, algo, path, feeds, work)
        before = open_model(path)(feeds)
        for runtime in ("onnxruntime", "openvino"):
            options = {} if runtime == "onnxruntime" else {"precision": "f32"}
            got_raw = open_model(raw, runtime, **options)(feeds)
            got_u8 = open_model(u8, runtime, **options)(feeds)
            if caveat:  # the project's usual tolerance, 1e-4 of max(1, the map's scale); no uint8
                reference.assert_close_raw(got_raw["saliency_map"], expected, f"{algo} raw in {runtime}")
                notes.add(caveat)
            else:
                assert_close(got_raw["saliency_map"], expected, f"{algo} raw in {runtime}")
                measured = reference.runtime_lsb(got_raw["saliency_map"], expected) if runtime == "openvino" else 0
                reference.assert_within_lsb(
                    got_u8["saliency_map"],
                    reference.to_uint8(expected, CLASS_WISE[algo]),
                    f"{algo} uint8 in {runtime}",
                    expected,
                    measured,
                )
            if runtime == "onnxruntime":
                for output, value in before.items():
                    assert np.array_equal(got_u8[output], value), f"original output {output} changed"
    middle = entry["levels"][len(entry["levels"]) // 2]["size"] if "levels" in entry else None
    grid = entry.get("grid") or (middle if algo == "classwisesaliencymap" else None)
    if grid is not None:  # the map is over the positions the exporter's own model has
        assert list(expected.shape[-2:]) == list(grid), f"map grid {expected.shape[-2:]} != the model's {grid}"
    feeds = {name: _image(shape, 1)}
    row["ratio"] = f"{_latency(u8, feeds) / _latency(path, feeds):.2f}"
    return Row(row, status="equal", detail="; ".join([f"batch {', '.join(map(str, batches))}", *sorted(notes)]))


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str, rel: float = 1e-4) -> None:
    """Within `rel` of the map's own largest value (random weights give maps of any scale, 1e-12 to 1e3)."""
    scale = float(np.abs(expected).max()) or 1e-30
    err = float(np.abs(actual.astype(np.float64) - expected).max())
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel} x {scale:.3g}"


def _expected(entry: dict, meta: dict, algo: str, path: Path, feeds: dict, work: Path):
    """The reference map, and a caveat where its uint8 form cannot be compared."""
    if meta["xai_graph.task"] == "detection":
        if algo != "classwisesaliencymap":
            neck = meta["xai_graph.target"]
            probe = reference.with_outputs(path, [neck], work / "probe.onnx")
            return _feature_maps(open_model(probe)(feeds)[neck], algo)
        return detector_reference(path, entry, feeds, work), None
    if meta["xai_graph.task"] == "transformer":
        tokens = meta["xai_graph.target"]
        probe = reference.with_outputs(path, [tokens], work / "probe.onnx")
        x = open_model(probe)(feeds)[tokens][:, entry["extra_tokens"] :]
        f = x.transpose(0, 2, 1).reshape(x.shape[0], x.shape[2], *entry["grid"])  # the patch tokens, as a grid
        if algo in ("activationmap", "eigencam"):
            return _feature_maps(f, algo)
        return vit_reference(path, tokens, entry["extra_tokens"], entry["grid"], feeds, work), _caveat(f, algo)
    return cnn_reference(path, meta["xai_graph.target"], meta.get("xai_graph.layout", "NCHW"), algo, feeds, work)


def check_entry(entry: dict, cache: Path, work: Path) -> list[Row]:
    """Every method on one exported model; a missing file or a failure of xai-graph is a row, not an end."""
    rows = []
    for algo in ALGOS:
        row = Row.start(entry, algo)
        folder = work / algo
        folder.mkdir(parents=True, exist_ok=True)
        try:
            if not (cache / entry["file"]).is_file():
                row = Row(row, status="not exported", detail=f"{entry['file']} is missing")
            else:
                row = check(entry, cache, algo, folder)
        except AssertionError as exc:
            row = Row(row, status="WRONG", detail=str(exc))
        except Exception as exc:  # noqa: BLE001  (a crash is a row of the matrix)
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            row = Row(row, status="CRASH", detail=f"{type(exc).__name__}: {first}")
        print(
            f"{row['status']:8} {row['name']:55} {algo:22} {row['form']:45} {row['ratio']:5} {row['detail'][:150]}",
            flush=True,
        )
        rows.append(row)
    return rows


def run(cache: Path, only: str | None) -> list[Row]:
    manifest = json.loads((cache / "manifest.json").read_text())
    rows = []
    for entry in manifest:
        if only and only not in entry["name"]:
            continue
        if "export_error" in entry:
            rows.append(Row(Row.start(entry, "-"), status="not exported", detail=entry["export_error"]))
            continue
        with tempfile.TemporaryDirectory() as work:
            rows += check_entry(entry, cache, Path(work))
    return rows


def markdown(rows: list[Row]) -> str:
    """One line per model: each method's status and form, the head's latency ratio, the insertion time."""
    lines = [
        "| model | exporter | activationmap | eigencam | classwisesaliencymap | latency ratio (Recipro) | insert (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    by_model: dict[str, dict[str, Row]] = {}
    for r in rows:
        by_model.setdefault(r["name"], {})[r["method"]] = r
    for name, methods in by_model.items():
        cells = []
        for algo in ALGOS:
            r = methods.get(algo)
            if r is None:
                cells.append("")
            elif r["status"] == "equal":
                form = _form(r["form"])
                forced = " (only with `--brute-force`)" if "only with --brute-force" in r["detail"] else ""
                flat = " *" if "uint8 not" in r["detail"] else ""
                cells.append("equal" + (f", {form}" if form else "") + forced + flat)
            else:
                cells.append(f"{r['status']}: {_short(r['detail'])}")
        first = next(iter(methods.values()))
        recipro = methods.get("classwisesaliencymap", {})
        lines.append(
            f"| {name} | {first['exporter']} | {' | '.join(cells)} | {recipro.get('ratio', '')} | "
            f"{recipro.get('insert_s', '') or first.get('insert_s', '')} |"
        )
    return "\n".join(lines) + "\n"


def _form(method_title: str) -> str:
    """ "Recipro-CAM (fused)" -> "fused"; the title itself where there is no form."""
    return method_title[method_title.find("(") + 1 : -1] if "(" in method_title else ""


def _short(detail: str) -> str:
    """A refusal's reason, short enough for a table cell."""
    text = detail.split(": ", 1)[-1] if detail.startswith("/") else detail
    text = text.split(";")[0]
    return text.replace("|", "/")[:110]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("--only")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = run(args.cache, args.only)
    if args.markdown:
        args.markdown.write_text(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("equal", "refused", "WRONG", "CRASH", "not exported")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if counts["WRONG"] or counts["CRASH"] else 0


if __name__ == "__main__":
    sys.exit(main())
