"""`explain --engine ray` against the local engine, with the real runtimes and a real (local, 2-CPU) Ray cluster.

One Ray cluster is started for the module (`ray.init(num_cpus=2)`); the CLI runs in child processes that join
it with --ray-address (the embedded default, a Ray started inside the CLI, is run once, for Parquet). What is
checked: the same files, byte for byte, and the same predictions.json as the local engine on the sample photos
and a few hundred generated ones; a pool actor killed mid-run costs no image; a rerun after an interruption
explains only what is missing (both engines); Parquet output; one-line errors for bad input, nothing written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
pq = pytest.importorskip("pyarrow.parquet")

import xai_graph  # noqa: E402
from xai_graph.explaining.explainer import Explainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
GENERATED = 240
WORKER_TITLE = "ExplainWorker"  # in the process title Ray gives pool actors: ray::MapWorker(MapBatches(...))


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "lite0_xai.onnx"
    xai_graph.save_model(xai_graph.insert(SAMPLES / "efficientnet_lite0.onnx"), out)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """The four sample photos and GENERATED small crops of them (JPEG and PNG, 64 to 200 px)."""
    folder = tmp_path_factory.mktemp("images")
    photos = sorted((SAMPLES / "images").iterdir())
    rng = np.random.default_rng(3)
    for photo in photos:
        (folder / photo.name).write_bytes(photo.read_bytes())
    decoded = [cv2.imread(str(p)) for p in photos]
    for i in range(GENERATED):
        image = decoded[i % len(decoded)]
        h, w = image.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1)), int(w * rng.uniform(0.5, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        side = rng.uniform(64, 200)
        crop = cv2.resize(
            image[y : y + ch, x : x + cw], (max(8, int(cw * side / max(ch, cw))), max(8, int(ch * side / max(ch, cw))))
        )
        cv2.imwrite(str(folder / f"gen_{i:03d}.{'jpg' if i % 2 else 'png'}"), crop)
    return folder


def cli(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xai_graph", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "xai_graph", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def predictions(folder: Path) -> dict:
    return json.loads((folder / "predictions.json").read_text())


def journal_lines(folder: Path) -> int:
    try:
        return len((folder / ".xai-graph-journal.jsonl").read_bytes().splitlines())
    except OSError:
        return 0


def wait_until(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended first: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def pool_actors() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(WORKER_TITLE in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def local_run(model, images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    result = cli("explain", model, "-i", images, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    return out


def assert_same_results(out: Path, reference: Path) -> None:
    got, expected = files(out), files(reference)
    assert sorted(got) == sorted(expected), set(got) ^ set(expected)
    differing = [name for name in expected if name != "predictions.json" and got[name] != expected[name]]
    assert not differing, f"{len(differing)} files differ, e.g. {differing[:3]}"
    assert predictions(out) == predictions(reference)  # (it records no timings)


def test_ray_engine_writes_what_the_local_engine_writes(cluster, model, images, local_run, tmp_path):
    out = tmp_path / "ray"
    result = cli(
        "explain", model, "-i", images, "-o", out, "--engine", "ray", "--ray-address", cluster, "--workers", "2", "-q"
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # Ray's own logging stays off the terminal
    assert f"{GENERATED + 4}/{GENERATED + 4} images explained" in result.stdout
    assert_same_results(out, local_run)
    assert len(predictions(out)["images"]) == GENERATED + 4


def test_a_killed_actor_costs_no_image(cluster, model, images, local_run, tmp_path):
    out = tmp_path / "ray"
    run = start(
        "explain", model, "-i", images, "-o", out, "--engine", "ray", "--ray-address", cluster, "--workers", "2", "-q"
    )
    wait_until(lambda: journal_lines(out) >= 30, run)
    victims = pool_actors()
    assert victims, "no pool actor found"
    victims[0].kill()  # SIGKILL: Ray restarts the actor and retries its batch
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert f"{GENERATED + 4}/{GENERATED + 4} images explained" in stdout
    assert_same_results(out, local_run)


@pytest.mark.parametrize("engine", ["ray", "local"])
def test_a_rerun_after_an_interruption_explains_only_what_is_missing(
    cluster, model, images, local_run, tmp_path, engine
):
    out = tmp_path / engine
    ray_options = ["--ray-address", cluster, "--workers", "2"] if engine == "ray" else []
    run = start("explain", model, "-i", images, "-o", out, "--engine", engine, *ray_options, "-q")
    wait_until(lambda: journal_lines(out) >= 40, run)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    done = len(predictions(out)["images"])
    assert 40 <= done < GENERATED + 4, done
    again = cli("explain", model, "-i", images, "-o", out, "--engine", engine, *ray_options, "-q")
    assert again.returncode == 0, again.stderr
    assert f"skipped {done} already explained" in again.stderr
    missing = GENERATED + 4 - done
    assert f"{missing}/{missing} images explained" in again.stdout
    assert_same_results(out, local_run)  # no image twice, no `-1` names


def test_parquet_output_holds_the_maps(model, tmp_path):
    """--format parquet, with the embedded Ray (no address: started inside the CLI) and with the local engine:
    the same rows; the maps are the head's, for the predicted class."""
    photos = SAMPLES / "images"
    env = {**os.environ, "RAY_ADDRESS": ""}
    embedded = cli(
        "explain", model, "-i", photos, "-o", tmp_path / "ray", "--engine", "ray", "--format", "parquet", "-q", env=env
    )
    assert embedded.returncode == 0, embedded.stderr
    local = cli("explain", model, "-i", photos, "-o", tmp_path / "local", "--format", "parquet", "-q")
    assert local.returncode == 0, local.stderr
    tables = {name: pq.read_table(tmp_path / name).sort_by("image") for name in ("ray", "local")}
    assert tables["ray"].drop(["source_mtime_ns"]).equals(tables["local"].drop(["source_mtime_ns"]))
    rows = tables["ray"].to_pylist()
    assert len(rows) == 4 and all(r["error"] is None for r in rows)
    assert all(p.suffix == ".parquet" for p in (tmp_path / "ray").iterdir())
    with Explainer(model) as explainer:
        for row in rows:
            explanation = explainer.explain([cv2.imread(row["image"])])[0]
            maps = np.asarray(row["maps"], np.uint8).reshape(row["map_shape"])
            assert row["explained"][0]["id"] == explanation.top[0].id
            assert np.array_equal(maps[0], explanation.map_for(explanation.top[0].id))
    again = cli("explain", model, "-i", photos, "-o", tmp_path / "local", "--format", "parquet", "-q")
    assert again.returncode == 0 and "skipped 4 already explained" in again.stderr, again.stderr


@pytest.mark.parametrize("case", ["unreachable address", "missing list", "parquet without paths", "uri locally"])
def test_bad_input_is_one_line_and_writes_nothing(model, tmp_path, case):
    import pyarrow as pa

    table = tmp_path / "list.parquet"
    pq.write_table(pa.table({"file": [str(SAMPLES / "images" / "chelsea.png")]}), table)
    out = tmp_path / "out"
    args = {
        "unreachable address": ["-i", SAMPLES / "images", "--engine", "ray", "--ray-address", "127.0.0.1:1"],
        "missing list": ["--list", tmp_path / "missing.txt", "--engine", "ray"],
        "parquet without paths": ["--list", table, "--engine", "ray"],
        "uri locally": ["--list", _uri_list(tmp_path)],
    }[case]
    result = cli("explain", model, *args, "-o", out, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not out.exists()


def _uri_list(tmp_path: Path) -> Path:
    listed = tmp_path / "uris.txt"
    listed.write_text(f"file://{SAMPLES / 'images' / 'chelsea.png'}\n")
    return listed


def test_a_path_list_of_uris_and_paths(cluster, model, tmp_path):
    """A text list mixing a file:// URI, a relative path and a file that is not there, read by the Ray engine: the
    URI's image is decoded from its bytes and named as given; the missing one is recorded as failed (exit 3)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        (photos / name).write_bytes((SAMPLES / "images" / name).read_bytes())
    listed = photos / "list.txt"
    listed.write_text(f"# two photos and a missing one\nfile://{photos / 'chelsea.png'}\n\ncoffee.png\ngone.png\n")
    result = cli(
        "explain", model, "--list", listed, "-o", tmp_path / "out", "--engine", "ray", "--ray-address", cluster, "-q"
    )
    assert result.returncode == 3 and "1 failed" in result.stderr, result.stderr
    records = {r["image"]: r for r in predictions(tmp_path / "out")["images"]}
    assert set(records) == {f"file://{photos / 'chelsea.png'}", str(photos / "coffee.png"), str(photos / "gone.png")}
    assert records[str(photos / "gone.png")]["error"] and not records[str(photos / "coffee.png")]["error"]
    assert records[f"file://{photos / 'chelsea.png'}"]["top"][0]["label"] == "Egyptian_cat"
    assert list((tmp_path / "out").glob("chelsea_Egyptian_cat_overlay.*"))  # (png or jpg: the default format)


def test_the_local_engine_does_not_import_ray(tmp_path):
    code = (
        "import sys; from xai_graph.cli.main import main; sys.argv = ['xai-graph', 'explain', sys.argv[1], '-i', "
        "sys.argv[2], '-o', sys.argv[3], '-q']\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'ray' not in sys.modules and 'pyarrow' not in sys.modules, 'imported'"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(SAMPLES / "efficientnet_lite0.onnx"),
            str(SAMPLES / "images"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "predictions.json").exists()
