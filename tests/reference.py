"""Saliency maps computed outside the graph, in numpy (and torch or a separate ONNX tail).

Nothing here imports xai_graph's graph code: these are the independent references
every inserted head is checked against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

GAUSSIAN = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64) / 16


def position_masks(h: int, w: int, kind: str) -> np.ndarray:
    """[hw, h, w]: mask p keeps position p (onehot) or its 3x3 Gaussian neighbourhood, clipped at borders."""
    masks = np.zeros((h * w, h, w))
    for p in range(h * w):
        i, j = divmod(p, w)
        if kind == "onehot":
            masks[p, i, j] = 1
            continue
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if 0 <= i + di < h and 0 <= j + dj < w:
                    masks[p, i + di, j + dj] = GAUSSIAN[di + 1, dj + 1]
    return masks


def activation_map(f: np.ndarray) -> np.ndarray:
    return f.astype(np.float64).mean(axis=1)


def eigencam(f: np.ndarray) -> np.ndarray:
    maps = []
    for fi in f.astype(np.float64):
        c, h, w = fi.shape
        x = fi.reshape(c, h * w).T
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        s = x @ vt[0]
        if np.sum(s * fi.mean(axis=0).ravel()) < 0:
            s = -s
        maps.append(s.reshape(h, w))
    return np.stack(maps)


def _score(logits: np.ndarray, score: str) -> np.ndarray:
    if score == "softmax":
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if score == "sigmoid":
        return 1 / (1 + np.exp(-logits))
    return logits


def recipro_cam(f: np.ndarray, tail, mask: str = "gaussian", score: str = "logits") -> np.ndarray:
    """tail: [N, C, h, w] float32 -> [N, K] logits, the original network after the target."""
    _, c, h, w = f.shape
    masks = position_masks(h, w, mask)
    maps = []
    for fi in f:
        masked = (fi[None] * masks[:, None]).astype(np.float32)  # [hw, C, h, w]
        scores = _score(np.asarray(tail(masked), dtype=np.float64).reshape(len(masked), -1), score)  # [hw, K]
        maps.append(scores.T.reshape(-1, h, w))
    return np.stack(maps)


def to_uint8(s: np.ndarray, class_wise: bool) -> np.ndarray:
    axes = (-2, -1)
    low, high = s.min(axis=axes, keepdims=True), s.max(axis=axes, keepdims=True)
    return np.round(255 * (s - low) / (high - low + 1e-12)).clip(0, 255).astype(np.uint8)


def assert_close_raw(actual: np.ndarray, expected: np.ndarray, what: str, rel: float = 1e-4) -> None:
    """|a - e| <= rel * max(1, max|e|): 1e-4 of the map's own scale."""
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual.astype(np.float64) - expected).max())
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel} x {scale:.3g}"


def float32_lsb(raw: np.ndarray) -> np.ndarray:
    """Per map, how many uint8 steps float32 rounding (1e-6 of the values' size) can move a pixel.

    A map whose range is tiny next to its values (softmax scores of one-hot masked
    maps, say) is scaled up so much that float32 noise alone exceeds one step.
    """
    axes = (-2, -1)
    span = raw.max(axis=axes, keepdims=True) - raw.min(axis=axes, keepdims=True)
    size = np.abs(raw).max(axis=axes, keepdims=True)
    return np.ceil(255 * 1e-6 * size / (span + 1e-30))


def runtime_lsb(got_raw: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Per map, how many uint8 steps the runtime's own float error moves a pixel, as its raw head shows it
    (OpenVINO's CPU kernels (erf, exp, accumulation order) differ from the reference by up to ~1e-5 of a
    map's size, more than float32 rounding alone: on a map whose range is small next to its values, a few
    steps). The raw error itself is bounded separately (`assert_close_raw`)."""
    axes = (-2, -1)
    span = raw.max(axis=axes, keepdims=True) - raw.min(axis=axes, keepdims=True)
    error = np.abs(got_raw.astype(np.float64) - raw).max(axis=axes, keepdims=True)
    return np.ceil(255 * error / (span + 1e-30))


def assert_within_lsb(
    actual: np.ndarray,
    expected: np.ndarray,
    what: str,
    raw: np.ndarray | None = None,
    runtime_error: np.ndarray | float = 0,
) -> None:
    """At most 1 LSB apart, plus what float32 rounding explains where `raw` (the float maps) is given, plus
    `runtime_error` (`runtime_lsb`) where the runtime's own float error was measured."""
    assert actual.dtype == np.uint8, f"{what}: dtype {actual.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    allowed = 1 + (float32_lsb(raw) if raw is not None else 0) + runtime_error
    err = np.abs(actual.astype(np.int32) - expected.astype(np.int32))
    assert (err <= allowed).all(), f"{what}: {int(err.max())} LSB apart (allowed {np.max(allowed):.0f})"


def with_outputs(path: Path, names: list[str], out: Path) -> Path:
    """A copy of the ONNX model at `path` that also outputs the named values (weights inlined)."""
    model = onnx.load(str(path))
    for name in names:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    onnx.save(model, str(out))
    return out


def onnx_tail(path: Path, start: str, end: str, out: Path):
    """The original model cut between `start` and `end` by onnx's own extractor; runs one map at a time."""
    import onnxruntime as ort

    full = out.with_suffix(".full.onnx")
    onnx.save(onnx.load(str(path)), str(full))
    onnx.utils.extract_model(str(full), str(out), [start], [end], check_model=False)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run([end], {start: m[None]})[0] for m in batch])

    return run
