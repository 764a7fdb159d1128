"""The command line: successful runs, and bad input that gets one line, a non-zero exit and no files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import zoo
from xai_graph.runtime import open_model

RESNET = zoo.Export("resnet", dynamo=False, opset=17, dynamic_batch=True, softmax=False)
DYNAMO = zoo.Export("efficientnet", dynamo=True, opset=18, dynamic_batch=True, softmax=True)


def xai_graph_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "xai-graph"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "xai_graph"]
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=120)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path, exported):
    path, _, _ = exported(RESNET)
    shutil.copy(path, tmp_path / "model.onnx")
    return tmp_path


def test_insert_writes_model_beside_input(workdir):
    result = xai_graph_cli("insert", workdir / "model.onnx", "--algo", "eigencam", "--feature-vector")
    assert result.returncode == 0, result.stderr
    out = workdir / "model_xai.onnx"
    assert "EigenCAM" in result.stdout and str(out) in result.stdout
    outputs = open_model(out)({"image": np.zeros((2, 3, 64, 64), np.float32)})
    assert list(outputs) == ["scores", "saliency_map", "feature_vector"]
    assert outputs["saliency_map"].shape == (2, 8, 8) and outputs["saliency_map"].dtype == np.uint8
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["xai_graph.algorithm"] == "eigencam" and meta["xai_graph.target"]
    assert sorted(p.name for p in workdir.iterdir()) == ["model.onnx", "model_xai.onnx"]  # no staging left


def test_insert_keeps_external_data_beside_output(tmp_path, exported):
    path, _, _ = exported(DYNAMO)
    assert Path(str(path) + ".data").exists(), "the dynamo exporter writes external data"
    out = tmp_path / "sub" / "explained.onnx"
    out.parent.mkdir()
    result = xai_graph_cli("insert", path, "-o", out)
    assert result.returncode == 0, result.stderr
    assert (out.parent / "explained.onnx.data").exists()
    moved = tmp_path / "elsewhere"
    shutil.copytree(out.parent, moved)  # loads from anywhere: no links back to the source's data file
    outputs = open_model(moved / "explained.onnx")({"image": np.zeros((1, 3, 64, 64), np.float32)})
    assert outputs["saliency_map"].shape == (1, 6, 8, 8)


def test_replace_rebuilds_the_head(workdir):
    first = workdir / "first.onnx"
    assert xai_graph_cli("insert", workdir / "model.onnx", "-o", first).returncode == 0
    second = workdir / "second.onnx"
    result = xai_graph_cli("insert", first, "--replace", "--algo", "activationmap", "-o", second)
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(second))
    assert [o.name for o in model.graph.output] == ["scores", "saliency_map"]
    assert {p.key: p.value for p in model.metadata_props}["xai_graph.algorithm"] == "activationmap"
    assert not any("Eye" in n.op_type for n in model.graph.node), "the old Recipro-CAM nodes are gone"


def test_inspect_reports_target_and_algorithms(workdir):
    result = xai_graph_cli("inspect", workdir / "model.onnx")
    assert result.returncode == 0, result.stderr
    assert "pooling that feeds 'scores'" in result.stdout
    for algo in ("activationmap", "eigencam"):
        assert f"algo    {algo}: yes\n" in result.stdout
    assert (
        "algo    classwisesaliencymap: yes (fused; re-run <0.1% of the graph per position (64 positions), "
        "about 1.0x the model's cost)" in result.stdout
    )


def test_insert_top_k_and_brute_force_options(workdir):
    out = workdir / "top.onnx"
    result = xai_graph_cli("insert", workdir / "model.onnx", "--classes", "topk:2", "--brute-force", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "cloned tail" in result.stdout
    outputs = open_model(out)({"image": np.zeros((3, 3, 64, 64), np.float32)})
    assert outputs["saliency_map"].shape == (3, 2, 8, 8) and outputs["saliency_classes"].shape == (3, 2)
    bad = xai_graph_cli("insert", workdir / "model.onnx", "--classes", "top5", "-o", workdir / "x.onnx")
    assert bad.returncode == 2 and "topk:N" in bad.stderr and not (workdir / "x.onnx").exists()


def test_bench_measures_every_variant_side_by_side(workdir):
    result = xai_graph_cli(
        "bench", workdir / "model.onnx", "--runtime", "both", "--batch", "1,2", "--rounds", "3", "--json"
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    variants = {
        "original",
        "activationmap",
        "eigencam",
        "maxactivation",
        "classwisesaliencymap (fused)",
        "classwisesaliencymap (cloned tail)",
    }
    for runtime in ("onnxruntime", "openvino"):
        for batch in (1, 2):
            group = {r["variant"]: r for r in rows if r["runtime"] == runtime and r["batch"] == batch}
            assert set(group) == variants
            assert group["original"]["ratio"] == 1.0 and group["original"]["size_growth_bytes"] == 0
            for name in variants - {"original"}:
                row = group[name]
                assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"]
                assert 0 < row["size_growth_bytes"] < 1_000_000 and row["insert_seconds"] > 0
                assert row["ratio"] == pytest.approx(row["median_ms"] / group["original"]["median_ms"])
    table = xai_graph_cli("bench", workdir / "model.onnx", "--runtime", "onnxruntime", "--batch", "1", "--rounds", "2")
    assert table.returncode == 0 and "classwisesaliencymap (cloned tail)" in table.stdout


def _mlp(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [3, 8], np.ones(24, np.float32))],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _bad_inputs(folder: Path) -> dict[str, tuple[list, str]]:
    model = folder / "model.onnx"
    (folder / "notes.onnx").write_text("this is not a model\n")
    data = model.read_bytes()
    (folder / "truncated.onnx").write_bytes(data[: len(data) // 2])
    _mlp(folder / "mlp.onnx")
    with_head = folder / "with_head.onnx"
    assert xai_graph_cli("insert", model, "-o", with_head).returncode == 0
    return {
        "missing file": (["insert", folder / "absent.onnx"], "no such file"),
        "not onnx": (["insert", folder / "notes.onnx"], "not"),
        "truncated": (["insert", folder / "truncated.onnx"], "truncated.onnx"),
        "no spatial map": (["insert", folder / "mlp.onnx"], "fed by no spatial map"),
        "unknown target": (["insert", model, "--target-layer", "nope"], "candidate maps:"),
        "output is input": (["insert", model, "-o", model], "refusing to overwrite the input"),
        "already has head": (["insert", with_head, "-o", folder / "again.onnx"], "--replace"),
        "inspect missing": (["inspect", folder / "absent.onnx"], "no such file"),
        "bad mean": (["insert", model, "--mean", "1,x,3", "-o", folder / "m.onnx"], "expected 1 or 3 numbers"),
    }


def test_bad_input_one_line_error_and_nothing_written(workdir):
    cases = _bad_inputs(workdir)
    for name, (args, message) in cases.items():
        before = _files(workdir)
        result = xai_graph_cli(*args)
        assert result.returncode != 0, name
        assert result.stdout == "", name
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (name, result.stderr)
        assert "Traceback" not in result.stderr
        assert _files(workdir) == before, f"{name}: files changed"
