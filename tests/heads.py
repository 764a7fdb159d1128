"""Shared checks: insert a head, run it in both runtimes, compare with a reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import reference
import xai_graph
from xai_graph.runtime import open_model

CLASS_WISE = {"classwisesaliencymap": True, "activationmap": False, "eigencam": False, "maxactivation": False}


def instrument(path: Path, out_dir: Path, algo: str, **options) -> tuple[Path, Path, str]:
    """Insert uint8 and raw (+ feature_vector) heads; returns both paths and the target's name."""
    u8 = xai_graph.save_model(xai_graph.insert(path, algo, **options), out_dir / f"{algo}_u8.onnx")
    raw_model = xai_graph.insert(path, algo, raw=True, feature_vector=True, **options)
    raw = xai_graph.save_model(raw_model, out_dir / f"{algo}_raw.onnx")
    return u8, raw, raw_model.metadata_props["xai_graph.target"]


def run_both(path: Path, feeds: dict) -> dict[str, dict[str, np.ndarray]]:
    return {rt: open_model(path, rt)(feeds) for rt in ("onnxruntime", "openvino")}


def check_head(
    original: Path,
    instrumented_u8: Path,
    instrumented_raw: Path,
    feeds: dict,
    expected_raw: np.ndarray,
    algo: str,
    features: np.ndarray | None = None,
) -> None:
    """Original outputs bit-identical (ONNX Runtime, full optimisation), maps equal to the reference in both
    runtimes, runtimes agree."""
    before = open_model(original, "onnxruntime")(feeds)
    u8 = run_both(instrumented_u8, feeds)
    raw = run_both(instrumented_raw, feeds)
    expected_u8 = reference.to_uint8(expected_raw, CLASS_WISE[algo])
    for name, value in before.items():
        for runs in (u8, raw):
            assert np.array_equal(runs["onnxruntime"][name], value), f"original output {name} changed"
    for rt in ("onnxruntime", "openvino"):
        reference.assert_close_raw(raw[rt]["saliency_map"], expected_raw, f"{algo} raw in {rt}")
        reference.assert_within_lsb(u8[rt]["saliency_map"], expected_u8, f"{algo} uint8 in {rt}", expected_raw)
        if features is not None:
            reference.assert_close_raw(raw[rt]["feature_vector"], features.mean(axis=(2, 3)), f"feature_vector in {rt}")
    reference.assert_within_lsb(
        u8["openvino"]["saliency_map"], u8["onnxruntime"]["saliency_map"], "OV vs ORT", expected_raw
    )
