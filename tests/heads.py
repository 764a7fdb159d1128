"""Shared checks: insert a head, run it in both runtimes, compare with a reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import reference
import xai_graph
from xai_graph.runtime import open_model

CLASS_WISE = {"classwisesaliencymap": True, "activationmap": False, "eigencam": False}


def instrument(path: Path, out_dir: Path, algo: str, **options) -> tuple[Path, Path, str]:
    """Insert uint8 and raw (+ feature_vector) heads; returns both paths and the target's name."""
    u8 = xai_graph.save_model(xai_graph.insert(path, algo, **options), out_dir / f"{algo}_u8.onnx")
    raw_model = xai_graph.insert(path, algo, raw=True, feature_vector=True, **options)
    raw = xai_graph.save_model(raw_model, out_dir / f"{algo}_raw.onnx")
    return u8, raw, raw_model.metadata_props["xai_graph.target"]


def run_both(path: Path, feeds: dict) -> dict[str, dict[str, np.ndarray]]:
    return {rt: open_model(path, rt)(feeds) for rt in ("onnxruntime", "openvino")}


def check_head(original: Path, instrumented_u8: Path, instrumented_raw: Path, feeds: dict, expected_raw: np.ndarray,
               algo: str, features: np.ndarray | None = None, fused_tolerance: float = 0.0) -> None:
    """Original outputs bit-identical, maps equal to the reference in both runtimes, runtimes agree.

    `fused_tolerance` > 0: where a head reads a value that ONNX Runtime's full optimisation would fuse
    away (a transformer block's input, fused into SkipLayerNormalization), the original outputs are
    compared bit for bit with basic optimisation and within this tolerance with full optimisation.
    """
    before = open_model(original, "onnxruntime")(feeds)
    u8 = run_both(instrumented_u8, feeds)
    raw = run_both(instrumented_raw, feeds)
    expected_u8 = reference.to_uint8(expected_raw, CLASS_WISE[algo])
    for name, value in before.items():
        for runs in (u8, raw):
            if fused_tolerance:
                np.testing.assert_allclose(runs["onnxruntime"][name], value, rtol=0, atol=fused_tolerance)
            else:
                assert np.array_equal(runs["onnxruntime"][name], value), f"original output {name} changed"
    if fused_tolerance:
        basic = {"graph_optimization_level": "basic"}
        plain = open_model(original, "onnxruntime", **basic)(feeds)
        for path in (instrumented_u8, instrumented_raw):
            got = open_model(path, "onnxruntime", **basic)(feeds)
            for name, value in plain.items():
                assert np.array_equal(got[name], value), f"original output {name} changed (basic optimisation)"
    for rt in ("onnxruntime", "openvino"):
        reference.assert_close_raw(raw[rt]["saliency_map"], expected_raw, f"{algo} raw in {rt}")
        reference.assert_within_lsb(u8[rt]["saliency_map"], expected_u8, f"{algo} uint8 in {rt}", expected_raw)
        if features is not None:
            reference.assert_close_raw(raw[rt]["feature_vector"], features.mean(axis=(2, 3)), f"feature_vector in {rt}")
    reference.assert_within_lsb(u8["openvino"]["saliency_map"], u8["onnxruntime"]["saliency_map"], "OV vs ORT",
                                expected_raw)
