"""Detection boxes and segmentation masks, read from the files people have.

Detection: COCO JSON, Pascal VOC XML (through defusedxml: no DTDs, no entities), KITTI and YOLO
text. Every format ends as the same thing: per image, boxes in source pixels (x0, y0, x1, y1,
continuous coordinates) with class names, or, for YOLO, fractions of the image that become
pixels once the image is decoded. Segmentation: image + mask pairs matched by their path.

Nothing is dropped silently: what cannot be used is recorded in ``skips`` with a reason. A file
that cannot be trusted at all (too large, an XML bomb, not the format it claims) is either one
skipped file (one VOC file, one label file) or, when it describes the whole dataset (the COCO
file, the class list), an ``AnnotationError`` that fails the import with its message.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from defusedxml import DefusedXmlException  # type: ignore[import-untyped]
from defusedxml import ElementTree as SafeET

from shared.images import IMAGE_EXTENSIONS
from worker.datasets.importer import LINK_OUTSIDE, _ignored, _link_escapes

FORMATS = ("coco", "voc", "kitti", "yolo")
# The COCO file describes a whole split; larger ones are refused before any byte is parsed
# (json.loads turns 64 MiB of tiny objects into ~1.5 GB of Python ones). Per-image files are
# far smaller.
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_BOXES_PER_IMAGE = 2_000
MAX_CLASSES = 1_000
MAX_SEGMENTATION_CLASSES = 255  # mask values 0..254; 255 is ignore
MAX_NAME = 200
# Folders that hold one kind of file in the layouts people use; a path below one of them is
# paired with the same path below another (images/a/x.jpg with labels/a/x.txt).
IMAGE_DIRS = frozenset({"images", "jpegimages", "image_2", "img", "imgs"})
LABEL_DIRS = frozenset({"labels", "label_2", "annotations"})
MASK_DIRS = frozenset({"masks", "segmentationclass", "annotations", "labels"})
CLASS_FILES = ("classes.txt", "obj.names", "labels.txt")
COLOR_FILE = "colors.txt"
SEGMENTATION_CLASS_FILES = ("classes.txt", "labels.txt")
KITTI_IGNORED = "dontcare"


class AnnotationError(Exception):
    """An annotation problem that stops the import; the message is for the person."""


class Skips(Protocol):
    """Where skipped files and boxes are counted (the importer's record)."""

    def add(self, rel: str, reason: str) -> None:
        """Record one skipped item."""


@dataclass
class RawBox:
    """One box as annotated: pixels of the source image, or fractions of it (YOLO)."""

    label: str
    box: tuple[float, float, float, float]
    fractions: bool = False


@dataclass
class Item:
    """One image and what it is annotated with."""

    image: str
    rel: str
    boxes: list[RawBox] = field(default_factory=list)
    mask: str | None = None
    mask_rel: str | None = None


@dataclass
class Parsed:
    """What a split's files hold."""

    format: str
    items: list[Item]
    classes: list[str] | None = None  # declared by the files (COCO categories, a class list)
    colors: list[tuple[int, int, int]] | None = None


# ----------------------------------------------------------------------------- files


def _rel(path: str, base: str) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def walk(root: Path, skips: Skips) -> list[str]:
    """Every visible file under root, sorted; links that lead outside root are skipped."""
    real_root = os.path.realpath(root)
    found: list[str] = []
    stack = [os.fspath(root)]
    seen: set[str] = set()
    while stack:
        current = stack.pop()
        real = os.path.realpath(current)
        if real in seen:
            continue
        seen.add(real)
        with os.scandir(current) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for entry in entries:
            if _ignored(entry.name):
                continue
            if _link_escapes(entry, real_root):
                skips.add(_rel(entry.path, os.fspath(root)), LINK_OUTSIDE)
                continue
            if entry.is_dir():
                subdirs.append(entry.path)
            elif entry.is_file():
                found.append(entry.path)
        stack.extend(reversed(subdirs))
    return found


def unwrap(root: Path) -> Path:
    """Descend through single folders that wrap everything (an archive of one folder)."""
    for _ in range(8):
        with os.scandir(root) as it:
            entries = [e for e in it if not _ignored(e.name)]
        if len(entries) != 1 or not entries[0].is_dir(follow_symlinks=False):
            break
        if entries[0].name.lower() in IMAGE_DIRS | LABEL_DIRS | MASK_DIRS:
            break
        root = Path(entries[0].path)
    return root


def _key(rel: str, dirs: frozenset[str]) -> str:
    """A file's pairing key: its path without extension and without a kind-of-file folder."""
    parts = Path(rel).with_suffix("").parts
    for i, part in enumerate(parts[:-1]):
        if part.lower() in dirs:
            return "/".join(parts[:i] + parts[i + 1 :])
    return "/".join(parts)


def _is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _read_small(path: str, limit: int, what: str) -> bytes:
    size = os.stat(path).st_size
    if size > limit:
        raise _TooLarge(f"{what} too large ({size:,} bytes; the limit is {limit:,})")
    with open(path, "rb") as fh:
        return fh.read(limit + 1)


class _TooLarge(Exception):
    pass


def _text_lines(path: str) -> list[str]:
    data = _read_small(path, MAX_FILE_BYTES, "annotation file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _Bad("not UTF-8 text") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


class _Bad(Exception):
    pass


def read_class_list(path: str) -> list[str]:
    """Class names, one per line (the file names them for every split: errors stop the import)."""
    try:
        names = _text_lines(path)
    except (_TooLarge, _Bad) as exc:
        raise AnnotationError(f"{Path(path).name}: {exc}") from None
    if not names:
        raise AnnotationError(f"{Path(path).name} names no classes")
    return check_names(names, Path(path).name)


def name_problem(name: str) -> str | None:
    """Why a class name cannot be used (it becomes a line of labels.txt and a key), or None."""
    if not name:
        return "an empty class name"
    if len(name) > MAX_NAME:
        return f"a class name over {MAX_NAME} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "a class name with a control character"
    return None


def check_names(names: list[str], where: str) -> list[str]:
    """A declared class list, or an AnnotationError that says what is wrong with it."""
    for name in names:
        problem = name_problem(name)
        if problem:
            raise AnnotationError(f"{where}: {problem} ({name[:40]!r})")
    if len(set(names)) != len(names):
        raise AnnotationError(f"{where} names a class twice")
    if len(names) > MAX_CLASSES:
        raise AnnotationError(f"{where} names {len(names)} classes; at most {MAX_CLASSES}")
    return names


def _id(value: Any) -> int | None:
    """A COCO id: an integer (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Bad("a coordinate is not a number")
    try:
        return float(value)
    except ValueError:
        raise _Bad(f"a coordinate is not a number ({str(value)[:20]!r})") from None


def _check_finite(box: tuple[float, float, float, float]) -> None:
    if not all(math.isfinite(v) for v in box):
        raise _Bad("box with a coordinate that is not a finite number")


# ----------------------------------------------------------------------------- detection


def detect_format(files: list[str]) -> str:
    """The detection format a folder's files are in (the request may also say it)."""
    names = [os.path.basename(f).lower() for f in files]
    if any(n.endswith(".json") for n in names):
        return "coco"
    if any(n.endswith(".xml") for n in names):
        return "voc"
    for path, name in zip(files, names, strict=True):
        if name.endswith(".txt") and name not in CLASS_FILES and name != COLOR_FILE:
            try:
                lines = _text_lines(path)
            except (_TooLarge, _Bad, OSError):
                continue
            fields = lines[0].split() if lines else []
            if len(fields) == 5 and all(_numeric(f) for f in fields):
                return "yolo"
            if len(fields) >= 8 and not _numeric(fields[0]) and all(map(_numeric, fields[1:8])):
                return "kitti"  # other .txt files (lists of image paths) say nothing
    raise AnnotationError(
        "no annotations found: expected a COCO .json file, Pascal VOC .xml files, "
        "or KITTI/YOLO .txt label files beside the images"
    )


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_detection(root: Path, fmt: str, skips: Skips) -> Parsed:
    """Read a split's detection annotations in one of FORMATS."""
    root = unwrap(root)
    base = os.fspath(root)
    files = walk(root, skips)
    if fmt == "auto":
        fmt = detect_format(files)
    if fmt == "coco":
        return _coco(base, files, skips)
    return _paired(base, files, fmt, skips)


def _coco(base: str, files: list[str], skips: Skips) -> Parsed:
    jsons = [f for f in files if f.lower().endswith(".json")]
    if not jsons:
        raise AnnotationError("COCO: no .json annotation file found")
    if len(jsons) > 1:
        names = ", ".join(_rel(j, base) for j in jsons[:5])
        raise AnnotationError(f"COCO: one .json file per split, found {len(jsons)} ({names})")
    path = jsons[0]
    try:
        data = _read_small(path, MAX_JSON_BYTES, "COCO file")
        doc = json.loads(data)
    except _TooLarge as exc:
        raise AnnotationError(f"COCO: {exc}") from None
    except (ValueError, RecursionError):
        raise AnnotationError(f"COCO: {_rel(path, base)} is not valid JSON") from None
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise AnnotationError("COCO: the file needs lists of images, annotations and categories")
    categories: dict[int, str] = {}
    for cat in doc["categories"]:
        cat_id = _id(cat.get("id")) if isinstance(cat, dict) else None
        if cat_id is None:
            raise AnnotationError("COCO: every category needs an integer id and a name")
        name = cat.get("name")
        if not isinstance(name, str) or not name or cat_id in categories:
            raise AnnotationError(f"COCO: category {cat_id} has no name or is listed twice")
        categories[cat_id] = name
    check_names(list(categories.values()), "COCO: the categories")
    folder = os.path.dirname(path)
    on_disk = {os.path.normpath(f): f for f in files if _is_image(f)}
    items: dict[int, Item] = {}
    listed: set[str] = set()
    missing: set[int] = set()
    for entry in doc["images"]:
        image_id = _id(entry.get("id")) if isinstance(entry, dict) else None
        if image_id is None:
            raise AnnotationError("COCO: every image needs an integer id and a file_name")
        name = entry.get("file_name")
        if not isinstance(name, str) or not name or image_id in items or image_id in missing:
            raise AnnotationError(f"COCO: image {image_id} has no file_name or is listed twice")
        found = _find_image(name, (folder, os.path.join(folder, "images"), base), on_disk, base)
        if found is None or found in listed:
            reason = (
                "listed in the COCO file but not found"
                if found is None
                else ("a second COCO image entry for the same file")
            )
            skips.add(name[:200], reason)
            missing.add(image_id)
            continue
        listed.add(found)
        items[image_id] = Item(image=found, rel=_rel(found, base))
    for path in on_disk.values():
        if path not in listed:
            skips.add(_rel(path, base), "image not in the COCO file")
    for ann in doc["annotations"]:
        if not isinstance(ann, dict):
            raise AnnotationError("COCO: every annotation must be an object")
        image_id = _id(ann.get("image_id"))
        item = items.get(image_id) if image_id is not None else None
        if item is None:
            if image_id not in missing:  # a missing image's boxes go with it, said once
                skips.add(
                    f"annotation {str(ann.get('id'))[:20]}",
                    f"image_id {str(ann.get('image_id'))[:20]} is not an image of the file",
                )
            continue
        where = f"{item.rel} (annotation {str(ann.get('id'))[:20]})"
        if ann.get("iscrowd"):
            skips.add(where, "crowd region (iscrowd=1), not a box")
            continue
        category_id = _id(ann.get("category_id"))
        category = categories.get(category_id) if category_id is not None else None
        if category is None:
            skips.add(where, f"unknown category id {str(ann.get('category_id'))[:20]}")
            continue
        bbox = ann.get("bbox")
        try:
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise _Bad("bbox is not [x, y, width, height]")
            x, y, w, h = (_number(v) for v in bbox)
            box = (x, y, x + w, y + h)
            _check_finite(box)
        except _Bad as exc:
            skips.add(where, str(exc))
            continue
        if len(item.boxes) >= MAX_BOXES_PER_IMAGE:
            skips.add(where, f"over {MAX_BOXES_PER_IMAGE} boxes in one image")
            continue
        item.boxes.append(RawBox(category, box))
    return Parsed("coco", list(items.values()), [categories[k] for k in sorted(categories)])


def _find_image(
    name: str, folders: tuple[str, ...], on_disk: dict[str, str], base: str
) -> str | None:
    """The file a COCO file_name names, only among the split's files (no path escapes)."""
    for folder in folders:
        candidate = os.path.normpath(os.path.join(folder, name))
        if candidate in on_disk and os.path.commonpath([candidate, base]) == base:
            return on_disk[candidate]
    return None


def _keyed(files: list[str], base: str, dirs: frozenset[str], skips: Skips) -> dict[str, str]:
    """Files by pairing key; a second file with the same key (x.jpg beside x.png) is skipped."""
    found: dict[str, str] = {}
    for f in files:
        key = _key(_rel(f, base), dirs)
        if key in found:
            skips.add(_rel(f, base), f"another file is also {key} ({_rel(found[key], base)})")
        else:
            found[key] = f
    return found


def _paired(base: str, files: list[str], fmt: str, skips: Skips) -> Parsed:
    """VOC, KITTI and YOLO: one annotation file per image, paired by path."""
    ext = ".xml" if fmt == "voc" else ".txt"
    declared: list[str] | None = None
    class_files = [f for f in files if os.path.basename(f).lower() in CLASS_FILES]
    if fmt == "yolo":
        if not class_files:
            raise AnnotationError(
                "YOLO labels name classes by number: add classes.txt (or obj.names), "
                "one class name per line, line 1 for class 0"
            )
        declared = read_class_list(class_files[0])
    ignored = {os.path.normpath(f) for f in class_files}
    images = _keyed([f for f in files if _is_image(f)], base, IMAGE_DIRS, skips)
    labels = _keyed(
        [
            f
            for f in files
            if f.lower().endswith(ext)
            and os.path.normpath(f) not in ignored
            and os.path.basename(f).lower() != COLOR_FILE
        ],
        base,
        LABEL_DIRS,
        skips,
    )
    for f in files:
        if os.path.normpath(f) in ignored or os.path.basename(f).lower() == COLOR_FILE:
            continue
        if not f.lower().endswith(ext) and not _is_image(f):
            skips.add(_rel(f, base), f"neither an image nor a {fmt.upper()} annotation file")
    items: list[Item] = []
    for key, image in sorted(images.items()):
        label = labels.pop(key, None)
        rel = _rel(image, base)
        if label is None:
            skips.add(rel, f"no {fmt.upper()} annotation file for this image")
            continue
        item = Item(image=image, rel=rel)
        try:
            if fmt == "voc":
                _voc(label, item, skips)
            elif fmt == "kitti":
                _kitti(label, item, skips)
            else:
                assert declared is not None
                _yolo(label, item, declared, skips)
        except _TooLarge as exc:
            skips.add(_rel(label, base), str(exc))
            continue
        except _Bad as exc:
            skips.add(_rel(label, base), str(exc))
            continue
        items.append(item)
    for label in labels.values():
        skips.add(_rel(label, base), "annotation file without an image")
    return Parsed(fmt, items, declared)


def _voc(path: str, item: Item, skips: Skips) -> None:
    data = _read_small(path, MAX_FILE_BYTES, "VOC file")
    try:
        root = SafeET.fromstring(data, forbid_dtd=True)
    except DefusedXmlException:
        raise _Bad("refused: XML with a DTD or entities (an entity bomb, or a reference)") from None
    except (SafeET.ParseError, ValueError, LookupError) as exc:  # LookupError: an odd encoding=
        raise _Bad(f"not valid XML ({str(exc)[:80]})") from None
    if root.tag != "annotation":
        raise _Bad(f"not a Pascal VOC annotation (root element <{root.tag[:40]}>)")
    for n, obj in enumerate(root.iter("object")):
        where = f"{item.rel} (object {n + 1})"
        name = (obj.findtext("name") or "").strip()
        try:
            box_el = obj.find("bndbox")
            if not name or box_el is None:
                raise _Bad("object without a name or a bndbox")
            xmin, ymin, xmax, ymax = (
                _number((box_el.findtext(tag) or "").strip() or "missing")
                for tag in ("xmin", "ymin", "xmax", "ymax")
            )
            # VOC counts pixels from 1, both ends included: pixel 1..10 spans 0..10
            box = (xmin - 1, ymin - 1, xmax, ymax)
            _check_finite(box)
        except _Bad as exc:
            skips.add(where, str(exc))
            continue
        _append(item, RawBox(name, box), where, skips)


def _kitti(path: str, item: Item, skips: Skips) -> None:
    for n, line in enumerate(_text_lines(path)):
        where = f"{item.rel} (line {n + 1})"
        fields = line.split()
        if len(fields) < 8:
            skips.add(where, "a KITTI line needs a type and 7 numbers (truncated ... bottom)")
            continue
        name = fields[0]
        if name.lower() == KITTI_IGNORED:
            skips.add(where, "DontCare region, not a box")
            continue
        try:
            x0, y0, x1, y1 = (_number(v) for v in fields[4:8])
            box = (x0, y0, x1, y1)
            _check_finite(box)
        except _Bad as exc:
            skips.add(where, str(exc))
            continue
        _append(item, RawBox(name, box), where, skips)


def _yolo(path: str, item: Item, classes: list[str], skips: Skips) -> None:
    for n, line in enumerate(_text_lines(path)):
        where = f"{item.rel} (line {n + 1})"
        fields = line.split()
        if len(fields) != 5:
            skips.add(where, "a YOLO line is: class x_center y_center width height")
            continue
        try:
            index = int(fields[0])
        except ValueError:
            skips.add(where, f"class {fields[0][:20]!r} is not a class number")
            continue
        if not 0 <= index < len(classes):
            skips.add(where, f"unknown class number {index} ({len(classes)} classes listed)")
            continue
        try:
            cx, cy, w, h = (_number(v) for v in fields[1:])
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            _check_finite(box)
        except _Bad as exc:
            skips.add(where, str(exc))
            continue
        _append(item, RawBox(classes[index], box, fractions=True), where, skips)


def _append(item: Item, box: RawBox, where: str, skips: Skips) -> None:
    problem = name_problem(box.label)
    if problem:
        skips.add(where, problem)
    elif len(item.boxes) >= MAX_BOXES_PER_IMAGE:
        skips.add(where, f"over {MAX_BOXES_PER_IMAGE} boxes in one image")
    else:
        item.boxes.append(box)


# ----------------------------------------------------------------------------- segmentation


def parse_segmentation(root: Path, skips: Skips) -> Parsed:
    """Image + mask pairs: images/x.jpg with masks/x.png (or VOC's JPEGImages/SegmentationClass)."""
    root = unwrap(root)
    base = os.fspath(root)
    files = walk(root, skips)
    image_files: list[str] = []
    mask_files: list[str] = []
    declared: list[str] | None = None
    colors: list[tuple[int, int, int]] | None = None
    for f in files:
        rel = _rel(f, base)
        top = Path(rel).parts[0].lower() if len(Path(rel).parts) > 1 else ""
        name = os.path.basename(f).lower()
        if not top and name in SEGMENTATION_CLASS_FILES and declared is None:
            declared = read_class_list(f)
        elif not top and name == COLOR_FILE:
            colors = _read_colors(f)
        elif _is_image(f) and top in IMAGE_DIRS:
            image_files.append(f)
        elif _is_image(f) and top in MASK_DIRS:
            mask_files.append(f)
        else:
            skips.add(rel, "not in images/ or masks/ (nor classes.txt, colors.txt)")
    images = _keyed(image_files, base, IMAGE_DIRS, skips)
    masks = _keyed(mask_files, base, MASK_DIRS, skips)
    if declared is not None and len(declared) > MAX_SEGMENTATION_CLASSES:
        raise AnnotationError(
            f"classes.txt names {len(declared)} classes; masks hold at most "
            f"{MAX_SEGMENTATION_CLASSES} (255 is ignore)"
        )
    if not images or not masks:
        raise AnnotationError(
            "segmentation needs images/ and masks/ folders with the same file names "
            "(or VOC's JPEGImages/ and SegmentationClass/)"
        )
    if colors is not None and declared is not None and len(colors) != len(declared):
        raise AnnotationError(
            f"colors.txt has {len(colors)} colours for the {len(declared)} classes of classes.txt"
        )
    items: list[Item] = []
    for key, image in sorted(images.items()):
        mask = masks.pop(key, None)
        if mask is None:
            skips.add(_rel(image, base), "no mask for this image")
            continue
        items.append(Item(image=image, rel=_rel(image, base), mask=mask, mask_rel=_rel(mask, base)))
    for mask in masks.values():
        skips.add(_rel(mask, base), "mask without an image")
    return Parsed("masks", items, declared, colors)


def _read_colors(path: str) -> list[tuple[int, int, int]]:
    try:
        lines = _text_lines(path)
    except (_TooLarge, _Bad) as exc:
        raise AnnotationError(f"colors.txt: {exc}") from None
    colors = []
    for n, line in enumerate(lines):
        fields = line.replace(",", " ").split()
        try:
            rgb = tuple(int(v) for v in fields[-3:])
        except ValueError:
            rgb = ()
        if len(fields) < 3 or len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise AnnotationError(f"colors.txt line {n + 1}: expected three numbers 0-255 (r g b)")
        colors.append((rgb[0], rgb[1], rgb[2]))
        if len(colors) > MAX_SEGMENTATION_CLASSES:
            raise AnnotationError(f"colors.txt: more than {MAX_SEGMENTATION_CLASSES} colours")
    if len(set(colors)) != len(colors):
        raise AnnotationError("colors.txt gives one colour to two classes")
    return colors


def iter_boxes(items: list[Item]) -> Iterator[RawBox]:
    """Every box of a list of items."""
    for item in items:
        yield from item.boxes
