"""explain: rendering, files, predictions.json, layouts, class selection, raw maps, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

import xai_graph
import zoo
from test_cli import xai_graph_cli
from xai_graph.explaining.explainer import Explainer
from xai_graph.explaining.gallery import safe_name
from xai_graph.explaining.preprocess import Placement, Preprocessing, model_info_metadata
from xai_graph.explaining.render import colorize, map_to_image, overlay
from xai_graph.runtime import open_model

RESNET = zoo.Export("resnet", dynamo=False, opset=17, dynamic_batch=True, softmax=False)
# Labels that try to escape the output folder or break file names.
HOSTILE_LABELS = ["cat", "../../escape", "a/b", "bell\x07\nnew", "..", "dog"]
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _photo(seed: int, size=(96, 128)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), size[::-1], interpolation=cv2.INTER_CUBIC)
    return image


@pytest.fixture(scope="module")
def labelled_model(tmp_path_factory, exported):
    """The ResNet-like test model with hostile labels and preprocessing in its metadata, instrumented."""
    path, _, _ = exported(RESNET)
    out = tmp_path_factory.mktemp("labelled") / "resnet_xai.onnx"
    metadata = model_info_metadata(labels=HOSTILE_LABELS, mean="120", std="60", bgr=False, resize="standard")
    xai_graph.save_model(xai_graph.insert(path, metadata=metadata), out)
    return out


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for i, name in enumerate(["one.png", "two.jpg", "nested/three.png"]):
        cv2.imwrite(str(folder / name), _photo(i))
    return folder


# -- rendering -------------------------------------------------------------------------------------------


def _bilinear(saliency: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Centre-aligned bilinear resize with edge clamping, written out in numpy."""
    h, w = saliency.shape
    ys = np.clip((np.arange(out_h) + 0.5) * h / out_h - 0.5, 0, h - 1)
    xs = np.clip((np.arange(out_w) + 0.5) * w / out_w - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    s = saliency.astype(np.float64)
    top = s[y0][:, x0] * (1 - fx) + s[y0][:, x1] * fx
    bottom = s[y1][:, x0] * (1 - fx) + s[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def test_render_known_map_gives_expected_pixels():
    saliency = np.array([[0, 255, 0], [255, 0, 128]], dtype=np.uint8)
    # A 60 x 40 image resized to a 3 x 2 input; the map covers that input.
    resized, inside = map_to_image(saliency, Placement(3 / 60, 2 / 40, 0, 0), (3, 2), (40, 60), size=(60, 40))
    assert inside.all()
    assert np.abs(resized - _bilinear(saliency, 40, 60)).max() <= 1.0
    jet = colorize(np.array([[0, 255]], dtype=np.uint8))
    assert tuple(jet[0, 0]) == (128, 0, 0) and tuple(jet[0, 1]) == (0, 0, 128)  # BGR: 0 blue, 255 red
    image = np.full((1, 2, 3), 200, np.uint8)
    blended = overlay(image, jet, alpha=0.25)
    assert np.abs(blended.astype(int) - (0.75 * 200 + 0.25 * jet.astype(float))).max() <= 1


@pytest.mark.parametrize("resize", ["standard", "fit_to_window_letterbox", "crop"])
def test_map_lands_where_the_model_saw_it(resize):
    """A hot spot on the model input maps back onto the same image pixels, for every resize type."""
    image = np.zeros((300, 600, 3), np.uint8)
    cv2.circle(image, (390, 150), 30, (255, 255, 255), -1)
    prep = Preprocessing(width=64, height=64, resize=resize)
    tensor, placement = prep(image)
    seen = tensor.transpose(1, 2, 0).mean(axis=2)  # what the model sees: the bright disc
    resized, inside = map_to_image(seen, placement, (64, 64), image.shape, size=(600, 300))
    resized[~inside] = resized.min()
    ys, xs = np.nonzero(resized > (resized.max() + resized.min()) / 2)
    x, y = xs.mean(), ys.mean()  # centre of the bright region
    assert abs(x - 390) <= 6 and abs(y - 150) <= 6, (resize, x, y)
    if resize == "crop":  # the centre crop of a 2:1 image drops its left and right quarters
        assert not inside[:, :100].any() and inside[:, 200:400].all()


# -- a run ------------------------------------------------------------------------------------------------


def test_explain_writes_maps_overlays_predictions_and_gallery(labelled_model, photos, tmp_path):
    out = tmp_path / "out"
    result = xai_graph_cli("explain", labelled_model, "-i", photos, "-o", out, "--top-k", "3")
    assert result.returncode == 0, result.stderr
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions["images"]) == 3
    written = set()
    for record in predictions["images"]:
        stem = Path(record["image"]).stem
        assert record["error"] is None and len(record["top"]) == 3
        scores = [c["score"] for c in record["top"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
        assert [c["id"] for c in record["explained"]] == [record["top"][0]["id"]]  # default: the predicted class
        label = record["explained"][0]["label"]
        safe = safe_name(label)
        expected = {f"{stem}_image.jpg", f"{stem}_{safe}_saliency_map.png", f"{stem}_{safe}_overlay.jpg"}
        assert set(record["files"]) == expected
        written |= set(record["files"])
        overlay_image = cv2.imread(str(out / f"{stem}_{safe}_overlay.jpg"))
        assert overlay_image.shape == (96, 128, 3)  # rendered at the image's own size
        saliency = cv2.imread(str(out / f"{stem}_{safe}_saliency_map.png"), cv2.IMREAD_UNCHANGED)
        assert saliency.dtype == np.uint8 and saliency.ndim == 2  # the head's map as it computed it: grayscale
        assert max(saliency.shape) < 32 and saliency.max() == 255  # at its own resolution, scaled per map
    assert {p.name for p in out.iterdir()} == written | {"predictions.json", "index.html"}


def test_labels_cannot_escape_the_output_folder(labelled_model, photos, tmp_path):
    out = tmp_path / "out"
    result = xai_graph_cli("explain", labelled_model, "-i", photos, "-o", out, "--classes", "all")
    assert result.returncode == 0, result.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file() and photos not in p.parents]
    assert all(p.parent == out for p in files), [str(p) for p in files if p.parent != out]
    for p in files:
        assert p.name.isprintable() and "/" not in p.name and not p.name.startswith(".")
    assert len([p for p in files if p.name.endswith("_overlay.jpg")]) == 3 * len(HOSTILE_LABELS)


def test_class_selection(labelled_model, photos, tmp_path):
    image = [cv2.imread(str(photos / "one.png"))]
    with Explainer(labelled_model, classes="all") as e:
        assert [c.id for c in e.explain(image)[0].selected] == list(range(6))
    with Explainer(labelled_model, classes="1,dog") as e:
        assert [c.id for c in e.explain(image)[0].selected] == [1, 5]
    result = xai_graph_cli("explain", labelled_model, "-i", photos, "-o", tmp_path / "x", "--classes", "7,zebra")
    assert result.returncode == 1 and "zebra" not in result.stdout
    assert result.stderr.count("\n") == 1 and "neither a class id" in result.stderr
    assert not (tmp_path / "x").exists()


def test_multilabel_sigmoid_model_selects_all_classes_over_threshold(exported, tmp_path):
    path, _, _ = exported(RESNET)
    model = onnx.load(str(path))
    model.graph.node.append(onnx.helper.make_node("Sigmoid", ["scores"], ["probabilities"]))
    model.graph.output[0].name = "probabilities"
    sigmoid = tmp_path / "multilabel.onnx"
    onnx.save(model, str(sigmoid))
    images = [_photo(i, (64, 64)) for i in range(4)]
    with Explainer(sigmoid) as e:
        assert e.multilabel
        for explanation in e.explain(images):
            over = sorted(c.id for c in explanation.top if c.score >= 0.5)
            assert sorted(c.id for c in explanation.selected) == (over or [explanation.top[0].id])


def test_raw_maps_equal_the_model_output(labelled_model, photos, tmp_path, exported):
    path, _, _ = exported(RESNET)
    raw_model = tmp_path / "raw.onnx"
    xai_graph.save_model(xai_graph.insert(path, raw=True), raw_model)
    out = tmp_path / "out"
    result = xai_graph_cli(
        "explain",
        raw_model,
        "-i",
        photos / "one.png",
        "-o",
        out,
        "--raw",
        "--classes",
        "all",
        "--mean",
        "120",
        "--std",
        "60",
    )
    assert result.returncode == 0, result.stderr
    image = cv2.imread(str(photos / "one.png"))
    tensor = (image[:, :, ::-1].astype(np.float32) - 120) / 60
    tensor = cv2.resize(tensor, (64, 64), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)[None]
    expected = open_model(raw_model)({"image": tensor})["saliency_map"][0]
    arrays = sorted(out.glob("one_*_saliency_map.npy"))
    assert len(arrays) == expected.shape[0]
    for class_id in range(expected.shape[0]):
        saved = np.load(out / f"one_{class_id}_saliency_map.npy")
        assert saved.dtype == np.float32
        np.testing.assert_allclose(saved, expected[class_id], rtol=1e-4, atol=1e-4 * np.abs(expected).max())


class _ChannelsLast(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_nhwc_and_nchw_models_give_the_same_explanation(tmp_path, runtime):
    net = zoo.build("resnet", softmax=False)
    nchw, nhwc = tmp_path / "nchw.onnx", tmp_path / "nhwc.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 64, 64),),
        str(nchw),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["scores"],
        dynamic_axes={"image": {0: "b"}},
    )
    torch.onnx.export(
        _ChannelsLast(net),
        (torch.zeros(1, 64, 64, 3),),
        str(nhwc),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["scores"],
        dynamic_axes={"image": {0: "b"}},
    )
    images = [_photo(i) for i in range(3)]
    with Explainer(nchw, runtime=runtime) as a, Explainer(nhwc, runtime=runtime) as b:
        assert (a.preprocessing.layout, b.preprocessing.layout) == ("NCHW", "NHWC")
        for x, y in zip(a.explain(images), b.explain(images)):
            assert [c.id for c in x.top] == [c.id for c in y.top]
            assert np.abs(x.saliency.astype(int) - y.saliency.astype(int)).max() <= 1


# -- bad input --------------------------------------------------------------------------------------------


def test_bad_images_never_stop_the_run(labelled_model, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), _photo(0))
    (folder / "zero.png").write_bytes(b"")
    good_jpeg = cv2.imencode(".jpg", _photo(1))[1].tobytes()
    (folder / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (folder / "text.png").write_text("not an image at all")
    cv2.imwrite(str(folder / "gray.png"), _photo(2)[:, :, 0])
    cv2.imwrite(str(folder / "rgba.png"), np.dstack([_photo(3), np.full((96, 128), 128, np.uint8)]))
    cv2.imwrite(str(folder / "deep16.png"), _photo(4).astype(np.uint16) * 257)
    huge = np.zeros((9000, 12000, 3), np.uint8)
    huge[3000:6000, 4000:8000] = 200
    cv2.imwrite(str(folder / "huge.jpg"), huge, [cv2.IMWRITE_JPEG_QUALITY, 50])
    del huge
    (folder / "notes.txt").write_text("a file beside the photos, not an image")
    out = tmp_path / "out"
    # Peak memory of the run, read from the kernel for the child process alone.
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    script = Path(sys.executable).parent / "xai-graph"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            probe,
            str(script),
            "explain",
            str(labelled_model),
            "-i",
            str(folder),
            "-i",
            str(folder / "notes.txt"),
            "-o",
            str(out),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr  # some images failed
    peak_mb = int(result.stdout.strip().splitlines()[-1]) / 1024
    assert peak_mb < 1200, f"peak memory {peak_mb:.0f} MB for a 12000x9000 photo"
    records = {Path(r["image"]).name: r for r in json.loads((out / "predictions.json").read_text())["images"]}
    failed = {name for name, r in records.items() if r["error"]}
    assert failed == {"zero.png", "truncated.jpg", "text.png", "notes.txt"}, records
    assert "empty" in records["zero.png"]["error"] and "truncated" in records["truncated.jpg"]["error"]
    for name in ("good.png", "gray.png", "rgba.png", "deep16.png", "huge.jpg"):
        assert records[name]["files"], name
    huge_overlay = cv2.imread(str(out / next(f for f in records["huge.jpg"]["files"] if f.endswith("_overlay.jpg"))))
    assert max(huge_overlay.shape[:2]) == 2048  # rendered at a bounded size
    assert "failed" in result.stderr


def test_empty_input_folder_is_a_clear_error(labelled_model, tmp_path):
    (tmp_path / "empty").mkdir()
    result = xai_graph_cli("explain", labelled_model, "-i", tmp_path / "empty", "-o", tmp_path / "out")
    assert result.returncode == 1 and result.stderr.startswith("error: no images found")
    assert not (tmp_path / "out").exists()


def test_existing_output_folder_gets_results_added_never_overwritten(labelled_model, photos, tmp_path):
    """A rerun skips the images an earlier run explained (unchanged since, files still there); an image changed
    since gets new files beside the old (`-1` names), never over them; --overwrite redoes every image in place."""
    out = tmp_path / "out"
    assert xai_graph_cli("explain", labelled_model, "-i", photos, "-o", out).returncode == 0
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".png", ".jpg")}
    (out / "mine.txt").write_text("the user's own file")
    again = xai_graph_cli("explain", labelled_model, "-i", photos, "-o", out)
    assert again.returncode == 0 and "skipped 3 already explained" in again.stderr, again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".png", ".jpg")} == first
    cv2.imwrite(str(photos / "one.png"), _photo(5))  # changed since: explained again, beside the old files
    changed = xai_graph_cli("explain", labelled_model, "-i", photos, "-o", out)
    assert changed.returncode == 0 and "skipped 2 already explained" in changed.stderr, changed.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".png", ".jpg")}
    assert all(after[name] == data for name, data in first.items()), "an earlier result changed"
    one_files = [name for name in first if name.startswith("one_")]
    assert len(after) == len(first) + len(one_files)  # the changed image's new files sit beside, with -1 names
    assert (out / "mine.txt").read_text() == "the user's own file"
    records = json.loads((out / "predictions.json").read_text())["images"]
    assert len(records) == 3 and all(all(f in after for f in r["files"]) for r in records)
    assert all("-1." in f for r in records if r["image"].endswith("one.png") for f in r["files"])
    redone = xai_graph_cli("explain", labelled_model, "-i", photos, "-o", out, "--overwrite")
    assert redone.returncode == 0 and "skipped" not in redone.stderr
    assert len([p for p in out.iterdir() if p.suffix in (".png", ".jpg")]) == len(after)


# -- the real model ------------------------------------------------------------------------------------------


def test_demo_cat_map_sits_on_the_cat(tmp_path):
    result = xai_graph_cli("demo", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    assert "Egyptian_cat" in result.stdout and "index.html" in result.stdout
    with Explainer(tmp_path / "demo" / "efficientnet_lite0_xai.onnx", classes="Egyptian_cat") as explainer:
        image = cv2.imread(str(SAMPLES / "images" / "chelsea.png"))
        explanation = explainer.explain([image])[0]
        assert explanation.top[0].label == "Egyptian_cat"
        saliency, _ = map_to_image(explanation.map_for(285), explanation.placement, explainer.input_size, image.shape)
    # The cat's face fills the middle of the photo (451 x 300): eyes at y ~100, nose at y ~230.
    face = np.zeros(saliency.shape, bool)
    face[40:280, 90:370] = True
    y, x = np.unravel_index(np.argmax(saliency), saliency.shape)
    assert face[y, x], (x, y)
    assert saliency[face].mean() > 2 * saliency[~face].mean()


def test_png_overlays_on_request(labelled_model, photos, tmp_path):
    out = tmp_path / "out"
    result = xai_graph_cli("explain", labelled_model, "-i", photos / "one.png", "-o", out, "--image-format", "png")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "predictions.json").read_text())["images"][0]
    maps = [f for f in record["files"] if f.endswith("_saliency_map.png")]  # maps: PNG whatever the format
    overlays = [f for f in record["files"] if f.endswith("_overlay.png")]
    assert len(maps) == len(overlays) == 1
    assert cv2.imread(str(out / overlays[0])).shape == (96, 128, 3)
    assert overlays[0] in (out / "index.html").read_text()
