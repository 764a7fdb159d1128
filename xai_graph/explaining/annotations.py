"""Ground-truth boxes for evaluating saliency maps: COCO JSON, Pascal VOC XML and YOLO txt.

`read_annotations(path)` maps an image's file name to its boxes; the format follows from the path:
- a `.json` file: COCO (images[].file_name, annotations[].bbox [x, y, w, h], categories[].name);
  keys are the base names of file_name; x2 = x + w and y2 = y + h.
- a `.xml` file, or a folder of them: Pascal VOC (<annotation><filename>, <object><name>,
  <bndbox><xmin>..<ymax>); keys are <filename>; coordinates as written (VOC's are 1-based inclusive
  pixel indices; they are not shifted: a pixel is below the precision of boxes and maps alike).
- a folder of `.txt` files: YOLO, one file per image named after the image's stem, lines
  `class cx cy w h` normalised to 0..1, class names from `classes.txt`, `obj.names` or the `names:` of
  `data.yaml`. The label files do not say the image's extension, so keys are stems, and the pixel
  boxes need `image_sizes(stem)` -> (width, height) of that image, called with the label file's stem
  ("chelsea" for chelsea.txt).
Use `match_image` to look an image up: it tries the file name, then the stem. Every image the file
lists is a key, those without boxes too (with []).

Box coordinates are pixels of the original image, x to the right and y down, x2/y2 as the format gives
them (see above). Bad input raises AnnotationError with one line that names the file (and the line,
for YOLO). XML with a DTD or entity declarations (the "billion laughs" expansion) is refused, and only
regular files of at most MAX_FILE_BYTES are read.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import stat
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from xai_graph.errors import XaiGraphError

MAX_FILE_BYTES = 256 * 1024 * 1024
YOLO_CLASS_FILES = ("classes.txt", "obj.names", "data.yaml")
_XML_DECLARATIONS = (b"<!doctype", b"<!entity")


class AnnotationError(XaiGraphError):
    """An annotation file that cannot be read; the message is one line naming the file."""


@dataclass(frozen=True)
class Box:
    """One object: its class name and corners in pixels of the image, x2/y2 as the format gives them."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float


def _error(path: Path, message: str, line: int | None = None) -> AnnotationError:
    where = f"{path}:{line}" if line is not None else str(path)
    return AnnotationError(" ".join(f"{where}: {message}".split()))  # one line, whatever the OS or parser said


# -- reading files ---------------------------------------------------------------------------------------
def _read_bytes(path: Path) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO must not hang; fstat then refuses anything but a regular file.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise _error(path, "no such annotation file") from None
    except OSError as err:
        raise _error(path, f"cannot open the annotation file ({err.strerror})") from None
    with os.fdopen(descriptor, "rb") as stream:
        info = os.fstat(stream.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _error(path, "not a regular file; give an annotation file or folder")
        data = stream.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise _error(path, f"larger than {MAX_FILE_BYTES // 2**20} MiB; refusing to read it")
    return data


def _read_text(path: Path) -> str:
    try:
        return _read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _error(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def _parse_xml(path: Path) -> ET.Element:
    data = _read_bytes(path)
    # Expat reads UTF-16/32 too, where the markers below would hide between NUL bytes: refuse those.
    if b"\x00" in data:
        raise _error(path, "not an ASCII/UTF-8 XML file")
    lowered = data.lower()
    if any(marker in lowered for marker in _XML_DECLARATIONS):
        raise _error(path, "XML with a DTD or entity declarations; refusing it (entity expansion attack)")
    try:
        return ET.fromstring(data)
    except ET.ParseError as err:
        raise _error(path, f"malformed XML ({err})") from None


def _number(value: object, path: Path, what: str, line: int | None = None) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _error(path, f"{what} is not a number: {value!r}", line) from None
    if not math.isfinite(number):
        raise _error(path, f"{what} is not finite: {value!r}", line)
    return number


def _box(path: Path, label: str, corners: Sequence[float], line: int | None = None) -> Box:
    x1, y1, x2, y2 = corners
    if x2 < x1 or y2 < y1:
        raise _error(path, f"box '{label}' ends before it starts: x {x1}..{x2}, y {y1}..{y2}", line)
    return Box(label, x1, y1, x2, y2)


def _add_image(result: dict[str, list[Box]], path: Path, name: str, boxes: list[Box]) -> None:
    if name in result:
        raise _error(path, f"two sets of boxes for image '{name}'; keep one per image")
    result[name] = boxes


# -- COCO ------------------------------------------------------------------------------------------------
def _coco_table(document: dict, key: str, path: Path) -> list:
    table = document.get(key, [])
    if not isinstance(table, list) or not all(isinstance(entry, dict) for entry in table):
        raise _error(path, f"COCO '{key}' is not a list of objects")
    return table


def _coco_lookup(entries: list, field: str, path: Path, what: str) -> dict:
    try:
        return {entry["id"]: entry[field] for entry in entries}
    except (KeyError, TypeError) as err:
        raise _error(path, f"a COCO {what} lacks 'id' or '{field}' ({err})") from None


def _coco_box(annotation: dict, images: dict, categories: dict, path: Path) -> tuple[str, Box]:
    number = annotation.get("id", "?")
    image_id, category_id = annotation.get("image_id"), annotation.get("category_id")
    if not isinstance(image_id, (int, str)) or image_id not in images:  # a list id would be unhashable
        raise _error(path, f"annotation {number}: unknown image_id {image_id!r}")
    if not isinstance(category_id, (int, str)) or category_id not in categories:
        raise _error(path, f"annotation {number}: unknown category_id {category_id!r}")
    bbox = annotation.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise _error(path, f"annotation {number}: bbox is not [x, y, w, h]: {bbox!r}")
    x, y, w, h = (_number(value, path, f"annotation {number} bbox") for value in bbox)
    return images[image_id], _box(path, str(categories[category_id]), (x, y, x + w, y + h))


def _read_coco(path: Path) -> dict[str, list[Box]]:
    try:
        document = json.loads(_read_text(path))
    except (json.JSONDecodeError, RecursionError) as err:
        raise _error(path, f"malformed JSON ({err})") from None
    if not isinstance(document, dict):
        raise _error(path, "not a COCO file: the top level is not an object")
    images = _coco_lookup(_coco_table(document, "images", path), "file_name", path, "image")
    categories = _coco_lookup(_coco_table(document, "categories", path), "name", path, "category")
    images = {number: os.path.basename(str(name)) for number, name in images.items()}
    result: dict[str, list[Box]] = {}
    for name in images.values():
        _add_image(result, path, name, [])
    for annotation in _coco_table(document, "annotations", path):
        name, box = _coco_box(annotation, images, categories, path)
        result[name].append(box)
    return result


# -- Pascal VOC ------------------------------------------------------------------------------------------
def _voc_text(element: ET.Element, tag: str, path: Path, what: str) -> str:
    text = element.findtext(tag)
    if text is None or not text.strip():
        raise _error(path, f"{what} has no <{tag}>")
    return text.strip()


def _read_voc_file(path: Path) -> tuple[str, list[Box]]:
    root = _parse_xml(path)
    if root.tag != "annotation":
        raise _error(path, f"not a Pascal VOC file: the root is <{root.tag}>, not <annotation>")
    name = os.path.basename(_voc_text(root, "filename", path, "<annotation>"))
    boxes = []
    for number, element in enumerate(root.findall("object"), start=1):
        label = _voc_text(element, "name", path, f"object {number}")
        bndbox = element.find("bndbox")
        if bndbox is None:
            raise _error(path, f"object {number} ('{label}') has no <bndbox>")
        corners = [
            _number(_voc_text(bndbox, tag, path, f"object {number}"), path, f"object {number} {tag}")
            for tag in ("xmin", "ymin", "xmax", "ymax")
        ]
        boxes.append(_box(path, label, corners))
    return name, boxes


# -- YOLO ------------------------------------------------------------------------------------------------
def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text


def _yaml_names(text: str, path: Path) -> list[str]:
    """The `names:` of a YOLO data.yaml: a [a, b] list, a block list (- a) or a block map (0: a)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"names\s*:\s*(.*?)\s*$", line)
        if not match:
            continue
        if match.group(1).startswith("["):
            return [_unquote(name) for name in match.group(1).strip("[]").split(",") if name.strip()]
        names: dict[int, str] = {}
        for entry in lines[index + 1 :]:
            item = re.match(r"\s*(?:-\s*(.*)|([0-9]+)\s*:\s*(.*))$", entry)
            if not item:
                break
            names[len(names) if item.group(1) is not None else int(item.group(2))] = _unquote(
                item.group(1) if item.group(1) is not None else item.group(3)
            )
        if not names or sorted(names) != list(range(len(names))):
            raise _error(path, "names: is not a [list], a block list or a map numbering the classes 0, 1, 2, ...")
        return [names[number] for number in range(len(names))]
    raise _error(path, "no names: list of classes")


def _yolo_class_names(folder: Path) -> list[str]:
    for file_name in YOLO_CLASS_FILES:
        path = folder / file_name
        if path.is_file():
            text = _read_text(path)
            if file_name == "data.yaml":
                return _yaml_names(text, path)
            return [line.strip() for line in text.rstrip().splitlines()]
    raise _error(folder, f"a YOLO folder needs its class names in {', '.join(YOLO_CLASS_FILES)}")


def _image_size(path: Path, image_sizes: Callable[[str], tuple[int, int]]) -> tuple[int, int]:
    try:
        size = image_sizes(path.stem)
    except (LookupError, OSError) as err:
        raise _error(path, f"no image size for '{path.stem}' ({err})") from None
    if not (
        isinstance(size, tuple)
        and len(size) == 2
        and all(isinstance(side, numbers.Integral) and side > 0 for side in size)
    ):
        raise _error(path, f"image size for '{path.stem}' is not (width, height) in pixels: {size!r}")
    return int(size[0]), int(size[1])


def _yolo_line(path: Path, number: int, line: str, names: list[str], size: tuple[int, int]) -> Box:
    fields = line.split()
    if len(fields) != 5:
        raise _error(path, f"expected 'class cx cy w h' (5 fields), got {len(fields)}", number)
    if not re.fullmatch(r"[0-9]+", fields[0]) or int(fields[0]) >= len(names):
        raise _error(path, f"unknown class id {fields[0]!r} ({len(names)} class names)", number)
    cx, cy, w, h = (_number(field, path, "a coordinate", number) for field in fields[1:])
    if not all(0 <= value <= 1 for value in (cx, cy, w, h)):
        raise _error(path, "YOLO coordinates are normalised to 0..1; these are not", number)
    width, height = size
    corners = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
    return _box(path, names[int(fields[0])], corners, number)


def _read_yolo_folder(
    folder: Path, label_files: list[Path], image_sizes: Callable[[str], tuple[int, int]] | None
) -> dict[str, list[Box]]:
    if image_sizes is None:
        raise _error(folder, "YOLO boxes are relative to the image size; pass image_sizes")
    names = _yolo_class_names(folder)
    result: dict[str, list[Box]] = {}
    for path in label_files:
        lines = _read_text(path).splitlines()
        size = _image_size(path, image_sizes) if any(line.strip() for line in lines) else (1, 1)
        boxes = [
            _yolo_line(path, number, line, names, size) for number, line in enumerate(lines, start=1) if line.strip()
        ]
        _add_image(result, path, path.stem, boxes)
    return result


# -- entry points ----------------------------------------------------------------------------------------
def _read_folder(folder: Path, image_sizes: Callable[[str], tuple[int, int]] | None) -> dict[str, list[Box]]:
    try:
        files = sorted(entry for entry in folder.iterdir() if entry.is_file())
    except OSError as err:
        raise _error(folder, f"cannot list the folder ({err.strerror})") from None
    xml_files = [entry for entry in files if entry.suffix.lower() == ".xml"]
    label_files = [entry for entry in files if entry.suffix.lower() == ".txt" and entry.name != "classes.txt"]
    if xml_files and label_files:
        raise _error(folder, "holds both VOC .xml and YOLO .txt files; keep one format per folder")
    if label_files:
        return _read_yolo_folder(folder, label_files, image_sizes)
    if not xml_files:
        raise _error(folder, "no annotation files (.xml for Pascal VOC, .txt for YOLO)")
    result: dict[str, list[Box]] = {}
    for path in xml_files:
        _add_image(result, path, *_read_voc_file(path))
    return result


def read_annotations(
    path: str | os.PathLike, image_sizes: Callable[[str], tuple[int, int]] | None = None
) -> dict[str, list[Box]]:
    """Image file name (stem for YOLO) -> its boxes, from a COCO .json, a VOC .xml or a VOC/YOLO folder;
    `image_sizes(stem)` -> (width, height) is needed for YOLO only."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path, image_sizes)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _read_coco(path)
    if suffix == ".xml":
        return dict([_read_voc_file(path)])
    if not path.exists():
        raise _error(path, "no such annotation file or folder")
    raise _error(path, "unknown annotation format; give a COCO .json, a VOC .xml, or a VOC or YOLO folder")


def match_image(annotations: dict[str, list[Box]], image_path: str | os.PathLike) -> list[Box]:
    """The boxes of an image: by file name, else by stem (YOLO keys), else by the one key with the same
    stem (chelsea.jpg finds chelsea.png); [] when none matches."""
    image = Path(image_path)
    for key in (image.name, image.stem):
        if key in annotations:
            return annotations[key]
    same_stem = [key for key in annotations if Path(key).stem == image.stem]
    return annotations[same_stem[0]] if len(same_stem) == 1 else []


# -- class names -----------------------------------------------------------------------------------------
def _loose(name: str) -> str:
    return " ".join(re.split(r"[\s_\-]+", name.strip().casefold())).strip()


def _unique_index(table: dict[str, set[int]], key: str) -> int | None:
    indices = table.get(key, set())
    return next(iter(indices)) if len(indices) == 1 else None


def match_labels(box_labels: Iterable[str], model_labels: Sequence[str]) -> dict[str, int]:
    """Box label -> index in model_labels: an exact match, else a match ignoring case with '_', ' ' and
    '-' alike, else a model label whose comma-separated synonyms hold it. A name that two model labels
    match equally well (ImageNet has two "crane"s) is left out, like a name nothing matches."""
    exact: dict[str, set[int]] = {}
    loose: dict[str, set[int]] = {}
    synonyms: dict[str, set[int]] = {}
    for index, label in enumerate(model_labels):
        exact.setdefault(label, set()).add(index)
        loose.setdefault(_loose(label), set()).add(index)
        for synonym in label.split(","):
            synonyms.setdefault(_loose(synonym), set()).add(index)
    matched: dict[str, int] = {}
    for name in box_labels:
        if name in exact:  # an exact name decides, even when ambiguous: no looser rule can do better
            index = _unique_index(exact, name)
        else:
            index = _unique_index(loose, _loose(name))
            if index is None and _loose(name) not in loose:
                index = _unique_index(synonyms, _loose(name))
        if index is not None:
            matched[name] = index
    return matched
