"""xai_graph.explaining.annotations: COCO, Pascal VOC and YOLO files written here, the committed sample boxes, bad
input refused in one line, and class names matched to a model's labels."""

import json
import os
import signal
import struct
from pathlib import Path

import pytest

from xai_graph.explaining import annotations
from xai_graph.explaining.annotations import AnnotationError, Box, match_image, match_labels, read_annotations
from xai_graph.errors import XaiGraphError

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def write_coco(path, images, categories, boxes):
    document = {
        "images": [{"id": number, "file_name": name, "width": 100, "height": 80} for number, name in images],
        "categories": [{"id": number, "name": name} for number, name in categories],
        "annotations": [
            {"id": k, "image_id": image, "category_id": category, "bbox": bbox}
            for k, (image, category, bbox) in enumerate(boxes, start=1)
        ],
    }
    path.write_text(json.dumps(document))
    return path


def voc_xml(file_name, objects):
    parts = [f"<annotation><folder>x</folder><filename>{file_name}</filename>"]
    for name, (xmin, ymin, xmax, ymax) in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def assert_one_line_error(excinfo, *named):
    message = str(excinfo.value)
    assert isinstance(excinfo.value, XaiGraphError)
    assert "\n" not in message and message.strip() == message and message
    for text in named:
        assert str(text) in message, message


# -- COCO ------------------------------------------------------------------------------------------------
def test_coco_round_trip(tmp_path):
    path = write_coco(
        tmp_path / "boxes.json",
        [(1, "train/a.jpg"), (7, "b.png"), (9, "empty.png")],
        [(3, "cat"), (4, "dog")],
        [(1, 3, [10, 20, 30, 40]), (7, 4, [0.5, 1.5, 2, 3]), (1, 4, [0, 0, 100, 80])],
    )
    assert read_annotations(path) == {
        "a.jpg": [Box("cat", 10, 20, 40, 60), Box("dog", 0, 0, 100, 80)],
        "b.png": [Box("dog", 0.5, 1.5, 2.5, 4.5)],
        "empty.png": [],
    }
    assert read_annotations(str(path)) == read_annotations(path)


# -- Pascal VOC ------------------------------------------------------------------------------------------
def test_voc_file_and_folder(tmp_path):
    folder = tmp_path / "voc"
    folder.mkdir()
    (folder / "a.xml").write_text(voc_xml("a.jpg", [("cat", (1, 2, 30, 40)), ("dog", (5.5, 6, 7, 8))]))
    (folder / "b.xml").write_text("<?xml version='1.0' encoding='utf-8'?>\n" + voc_xml("b.png", []))
    (folder / "notes.md").write_text("ignored")
    assert read_annotations(folder / "a.xml") == {"a.jpg": [Box("cat", 1, 2, 30, 40), Box("dog", 5.5, 6, 7, 8)]}
    assert read_annotations(folder) == {"a.jpg": [Box("cat", 1, 2, 30, 40), Box("dog", 5.5, 6, 7, 8)], "b.png": []}


# -- YOLO ------------------------------------------------------------------------------------------------
def yolo_folder(tmp_path, class_file="classes.txt", class_text="cat\ndog\n"):
    folder = tmp_path / "yolo"
    folder.mkdir()
    (folder / class_file).write_text(class_text)
    (folder / "a.txt").write_text("1 0.5 0.5 0.5 0.25\n\n0 0.1 0.2 0.2 0.4\n")
    (folder / "b.txt").write_text("")
    return folder


def test_yolo_round_trip_asks_image_sizes_by_stem(tmp_path):
    asked = []

    def image_sizes(stem):
        asked.append(stem)
        return {"a": (200, 100)}[stem]  # (width, height)

    boxes = read_annotations(yolo_folder(tmp_path), image_sizes)
    assert boxes == {"a": [Box("dog", 50, 37.5, 150, 62.5), Box("cat", 0, 0, 40, 40)], "b": []}
    assert asked == ["a"]  # the stem, once per file with boxes


@pytest.mark.parametrize(
    "class_file, class_text",
    [
        ("obj.names", "cat\ndog\n"),
        ("data.yaml", "path: ../data\nnc: 2\nnames: ['cat', \"dog\"]\n"),
        ("data.yaml", "nc: 2\nnames:\n  - cat\n  - dog\ntrain: images\n"),
        ("data.yaml", "names:\n  1: dog\n  0: cat\n"),
    ],
)
def test_yolo_class_names_from_other_files(tmp_path, class_file, class_text):
    boxes = read_annotations(yolo_folder(tmp_path, class_file, class_text), lambda stem: (200, 100))
    assert [box.label for box in boxes["a"]] == ["dog", "cat"]


def test_yolo_needs_image_sizes_and_class_names(tmp_path):
    folder = yolo_folder(tmp_path)
    with pytest.raises(AnnotationError) as excinfo:
        read_annotations(folder)
    assert_one_line_error(excinfo, folder, "image_sizes")
    (folder / "classes.txt").unlink()
    with pytest.raises(AnnotationError) as excinfo:
        read_annotations(folder, lambda stem: (200, 100))
    assert_one_line_error(excinfo, folder, "classes.txt")


def test_yolo_size_callback_failures_name_the_file(tmp_path):
    folder = yolo_folder(tmp_path)
    with pytest.raises(AnnotationError) as excinfo:
        read_annotations(folder, lambda stem: {}[stem])
    assert_one_line_error(excinfo, folder / "a.txt", "'a'")
    with pytest.raises(AnnotationError) as excinfo:
        read_annotations(folder, lambda stem: (200, 0))
    assert_one_line_error(excinfo, folder / "a.txt", "width, height")


@pytest.mark.parametrize(
    "line, complaint",
    [
        ("0 0.5 0.5 0.2", "5 fields"),
        ("0 0.5 0.5 0.2 0.2 0.9", "5 fields"),
        ("2 0.5 0.5 0.2 0.2", "unknown class id"),
        ("-1 0.5 0.5 0.2 0.2", "unknown class id"),
        ("0 50 40 20 20", "normalised"),
        ("0 0.5 nan 0.2 0.2", "not finite"),
        ("0 0.5 x 0.2 0.2", "not a number"),
    ],
)
def test_yolo_bad_lines_name_file_and_line(tmp_path, line, complaint):
    folder = yolo_folder(tmp_path)
    (folder / "c.txt").write_text(f"0 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(AnnotationError) as excinfo:
        read_annotations(folder, lambda stem: (200, 100))
    assert_one_line_error(excinfo, f"{folder / 'c.txt'}:2:", complaint)


# -- the committed samples -------------------------------------------------------------------------------
def png_or_jpeg_size(path):
    """(width, height) from the PNG header or the JPEG start-of-frame marker."""
    data = path.read_bytes()
    if data.startswith(b"\x89PNG"):
        return struct.unpack(">II", data[16:24])
    position = 2
    while True:
        marker, length = data[position + 1], struct.unpack(">H", data[position + 2 : position + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height
        position += 2 + length


def test_the_sample_coco_and_voc_files_agree_and_fit_their_images():
    coco = read_annotations(SAMPLES / "annotations" / "coco.json")
    voc = read_annotations(SAMPLES / "annotations" / "voc")
    assert coco == voc
    photos = sorted(path.name for path in (SAMPLES / "images").iterdir())
    assert sorted(coco) == photos
    imagenet = (SAMPLES / "imagenet_labels.txt").read_text().splitlines()
    for name, boxes in coco.items():
        width, height = png_or_jpeg_size(SAMPLES / "images" / name)
        assert boxes, name
        for box in boxes:
            assert box.label in imagenet, box
            assert 0 <= box.x1 < box.x2 <= width - 1 and 0 <= box.y1 < box.y2 <= height - 1, (name, box)
    assert [box.label for box in coco["chelsea.png"]] == ["Egyptian cat"]
    assert match_labels([box.label for boxes in coco.values() for box in boxes], imagenet) == {
        "space shuttle": 812,
        "flagpole": 557,
        "football helmet": 560,
        "Egyptian cat": 285,
        "espresso": 967,
        "missile": 657,
    }


# -- bad input -------------------------------------------------------------------------------------------
BAD_FILES = {
    "missing.json": None,
    "truncated.json": '{"images": [',
    "list.json": "[1, 2]",
    "negative.json": json.dumps(
        {
            "images": [{"id": 1, "file_name": "a.png"}],
            "categories": [{"id": 1, "name": "c"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [10, 10, -3, 4]}],
        }
    ),
    "category.json": json.dumps(
        {
            "images": [{"id": 1, "file_name": "a.png"}],
            "categories": [{"id": 1, "name": "c"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 2, "bbox": [1, 1, 3, 4]}],
        }
    ),
    "image.json": json.dumps(
        {
            "images": [{"id": 1, "file_name": "a.png"}],
            "categories": [{"id": 1, "name": "c"}],
            "annotations": [{"id": 5, "image_id": [1], "category_id": 1, "bbox": [1, 1, 3, 4]}],
        }
    ),
    "bbox.json": json.dumps(
        {
            "images": [{"id": 1, "file_name": "a.png"}],
            "categories": [{"id": 1, "name": "c"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3]}],
        }
    ),
    "twice.json": json.dumps({"images": [{"id": 1, "file_name": "x/a.png"}, {"id": 2, "file_name": "y/a.png"}]}),
    "malformed.xml": "<annotation><filename>a.png</filename><object>",
    "reversed.xml": voc_xml("a.png", [("cat", (30, 2, 1, 40))]),
    "reversed_y.xml": voc_xml("a.png", [("cat", (1, 40, 30, 2))]),
    "word.xml": voc_xml("a.png", [("cat", ("one", 2, 3, 40))]),
    "nobox.xml": "<annotation><filename>a.png</filename><object><name>cat</name></object></annotation>",
    "noname.xml": "<annotation><object><name>cat</name></object></annotation>",
    "root.xml": "<html><filename>a.png</filename></html>",
    "doctype.xml": "<?xml version='1.0'?><!DOCTYPE annotation SYSTEM 'x.dtd'>" + voc_xml("a.png", []),
    "labels.csv": "a.png,1,2,3,4\n",
}


@pytest.mark.parametrize("file_name", sorted(BAD_FILES))
def test_bad_files_raise_one_line_naming_the_file(tmp_path, file_name):
    path = tmp_path / file_name
    if BAD_FILES[file_name] is not None:
        path.write_text(BAD_FILES[file_name])
    with pytest.raises(AnnotationError) as excinfo:
        read_annotations(path)
    assert_one_line_error(excinfo, path)


def test_billion_laughs_is_refused_before_parsing(tmp_path):
    entities = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{k} "{("&lol%s;" % (k - 1 or "")) * 10}">' for k in range(1, 10)
    ]
    bomb = f"<?xml version='1.0'?><!DOCTYPE lolz [{''.join(entities)}]><annotation>&lol9;</annotation>"
    lower = bomb.replace("DOCTYPE", "doctype").replace("ENTITY", "entity")  # not XML, but refused all the same
    for name, text in (("bomb.xml", bomb), ("lower.xml", lower)):
        (tmp_path / name).write_text(text)
        with pytest.raises(AnnotationError) as excinfo:
            read_annotations(tmp_path / name)
        assert_one_line_error(excinfo, tmp_path / name, "DTD")
    (tmp_path / "wide.xml").write_bytes(bomb.encode("utf-16"))  # the markers hide between NUL bytes
    with pytest.raises(AnnotationError) as excinfo:
        read_annotations(tmp_path / "wide.xml")
    assert_one_line_error(excinfo, tmp_path / "wide.xml", "UTF-8")


def test_only_regular_files_of_bounded_size_are_read(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("reading a FIFO blocked"))
    signal.alarm(5)
    try:
        with pytest.raises(AnnotationError) as excinfo:
            read_annotations(fifo)
    finally:
        signal.alarm(0)
    assert_one_line_error(excinfo, fifo, "regular file")
    big = write_coco(tmp_path / "big.json", [(1, "a.png")], [(1, "c")], [(1, 1, [0, 0, 1, 1])])
    monkeypatch.setattr(annotations, "MAX_FILE_BYTES", big.stat().st_size - 1)
    with pytest.raises(AnnotationError) as excinfo:
        read_annotations(big)
    assert_one_line_error(excinfo, big, "MiB")


def test_folders_without_annotations_or_with_two_formats(tmp_path):
    with pytest.raises(AnnotationError) as excinfo:
        read_annotations(tmp_path)
    assert_one_line_error(excinfo, tmp_path, "no annotation files")
    (tmp_path / "a.xml").write_text(voc_xml("a.png", []))
    (tmp_path / "b.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(AnnotationError) as excinfo:
        read_annotations(tmp_path)
    assert_one_line_error(excinfo, tmp_path, "both")


def test_messages_stay_on_one_line_whatever_the_file_holds(tmp_path):
    path = tmp_path / "multi.xml"
    path.write_text(voc_xml("a.png", [("tabby\ncat", (30, 2, 1, 40))]))
    with pytest.raises(AnnotationError) as excinfo:
        read_annotations(path)
    assert_one_line_error(excinfo, path, "tabby cat")


def test_two_voc_files_for_one_image_are_refused(tmp_path):
    (tmp_path / "a.xml").write_text(voc_xml("a.png", [("cat", (1, 2, 3, 4))]))
    (tmp_path / "a_copy.xml").write_text(voc_xml("a.png", [("dog", (1, 2, 3, 4))]))
    with pytest.raises(AnnotationError) as excinfo:
        read_annotations(tmp_path)
    assert_one_line_error(excinfo, "a.png")


# -- matching images and labels --------------------------------------------------------------------------
def test_match_image_by_name_then_stem():
    cat, dog = [Box("cat", 1, 2, 3, 4)], [Box("dog", 1, 2, 3, 4)]
    boxes = {"a.png": cat, "b": dog, "c.png": cat, "c.jpg": dog}
    assert match_image(boxes, "/photos/a.png") is cat
    assert match_image(boxes, Path("photos/b.jpg")) is dog  # a YOLO stem key
    assert match_image(boxes, "a.jpeg") is cat  # the one key with that stem
    assert match_image(boxes, "c.bmp") == []  # two keys with that stem: no guess
    assert match_image(boxes, "c.jpg") is dog
    assert match_image(boxes, "z.png") == []
    assert match_image({"b": dog, "b.png": cat}, "b.jpg") is dog  # the stem key first


def test_match_labels_exact_loose_and_synonyms():
    model = ["tabby, tabby cat", "Egyptian_cat", "crane", "space shuttle", "crane", "tiger cat"]
    assert match_labels(["Egyptian_cat"], model) == {"Egyptian_cat": 1}
    assert match_labels(["egyptian cat", "EGYPTIAN-CAT", " Space__Shuttle "], model) == {
        "egyptian cat": 1,
        "EGYPTIAN-CAT": 1,
        " Space__Shuttle ": 3,
    }
    assert match_labels(["tabby cat", "Tabby_Cat", "tabby"], model) == {"tabby cat": 0, "Tabby_Cat": 0, "tabby": 0}
    assert match_labels(["crane", "zebra", "cat"], model) == {}  # ambiguous or unknown: left out


def test_match_labels_prefers_exact_over_loose():
    assert match_labels(["a b"], ["a_b", "a b"]) == {"a b": 1}
    assert match_labels(["A_B"], ["a_b", "a b"]) == {}  # two equally loose matches


def test_match_labels_on_the_imagenet_label_file():
    imagenet = (SAMPLES / "imagenet_labels.txt").read_text().splitlines()
    assert match_labels(["Egyptian_cat", "tabby", "golden-retriever"], imagenet) == {
        "Egyptian_cat": 285,
        "tabby": 281,
        "golden-retriever": 207,
    }
