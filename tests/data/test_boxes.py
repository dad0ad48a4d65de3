"""Box annotations from Pascal VOC XML, COCO JSON and CSV; letterboxing; the real BCCD set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medmeta.data.boxes import (
    class_names,
    letterbox,
    load_box_images,
    read_box_csv,
    read_boxes,
    read_coco_json,
    read_voc_folder,
)
from medmeta.errors import DataError
from tests._helpers.detection import bccd_root

VOC = """<annotation><filename>a.png</filename><size><width>40</width><height>30</height></size>
<object><name>cell</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>12</xmax><ymax>13</ymax></bndbox></object>
<object><name>dot</name><bndbox><xmin>20</xmin><ymin>5</ymin><xmax>{x1}</xmax><ymax>9</ymax></bndbox></object>
</annotation>"""


def _voc(tmp_path: Path, x1: int = 25) -> Path:
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "Annotations" / "a.xml").write_text(VOC.format(x1=x1))
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text("a\n")
    Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(tmp_path / "JPEGImages" / "a.png")
    return tmp_path


def test_voc_folder_gives_boxes_labels_and_image_path(tmp_path: Path) -> None:
    (ann,) = read_voc_folder(_voc(tmp_path), split="test")
    assert ann.image == tmp_path / "JPEGImages" / "a.png"
    assert (ann.width, ann.height) == (40, 30)
    np.testing.assert_array_equal(ann.boxes, [[2, 3, 12, 13], [20, 5, 25, 9]])
    assert ann.labels == ("cell", "dot")


def test_voc_degenerate_box_is_refused_or_dropped_with_a_warning(tmp_path: Path) -> None:
    root = _voc(tmp_path, x1=20)
    with pytest.raises(DataError, match=r"a\.xml object 1: box .* xmax <= xmin.*--drop-bad-boxes"):
        read_voc_folder(root)
    with pytest.warns(UserWarning, match="dropped 1 degenerate"):
        (ann,) = read_voc_folder(root, drop_bad=True)
    assert ann.labels == ("cell",)


def test_voc_missing_split_names_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train\.txt not found: choose a split among \['test'\]"):
        read_voc_folder(_voc(tmp_path), split="train")


def test_coco_json_converts_xywh_to_corners(tmp_path: Path) -> None:
    coco = {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 8, "file_name": "b.png"},
        ],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [2, 3, 10, 10]}],
        "categories": [{"id": 3, "name": "cell"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    a, b = read_coco_json(path)
    np.testing.assert_array_equal(a.boxes, [[2, 3, 12, 13]])
    assert a.labels == ("cell",) and b.labels == () and b.boxes.shape == (0, 4)
    assert a.image == tmp_path / "a.png"


def test_coco_unknown_category_is_named(tmp_path: Path) -> None:
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 9, "bbox": [0, 0, 1, 1]}],
        "categories": [{"id": 3, "name": "cell"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match="annotation 5: unknown image_id 1 or category_id 9"):
        read_coco_json(path)


def test_csv_groups_rows_by_image_and_keeps_images_without_boxes(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text("image,xmin,ymin,xmax,ymax,label\na.png,1,2,3,4,cell\nb.png,,,,,\na.png,5,6,7,8,dot\n")
    a, b = read_box_csv(path)
    np.testing.assert_array_equal(a.boxes, [[1, 2, 3, 4], [5, 6, 7, 8]])
    assert a.labels == ("cell", "dot") and b.labels == ()
    assert class_names([a, b]) == ["cell", "dot"]


def test_csv_bad_header_and_bad_row_are_named(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text("file,x0,y0,x1,y1,class\n")
    with pytest.raises(DataError, match="expected image,xmin,ymin,xmax,ymax,label"):
        read_box_csv(path)
    path.write_text("image,xmin,ymin,xmax,ymax,label\na.png,1,2,x,4,cell\n")
    with pytest.raises(DataError, match=r"line 2: corners .* are not numbers"):
        read_box_csv(path)


def test_read_boxes_refuses_an_unknown_source(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("")
    with pytest.raises(DataError, match=r"give a Pascal VOC folder, a COCO \.json or a \.csv"):
        read_boxes(path)


def test_letterbox_keeps_aspect_and_pads_bottom_right() -> None:
    image = torch.full((3, 30, 60), 200, dtype=torch.uint8)
    out, scale = letterbox(image, 20)
    assert out.shape == (3, 20, 20) and scale == pytest.approx(1 / 3)
    assert bool((out[:, :10] == 200).all()) and bool((out[:, 10:] == 0).all())


def test_load_box_images_scales_boxes_and_drops_other_classes(tmp_path: Path) -> None:
    anns = read_voc_folder(_voc(tmp_path))
    images, boxes, labels, scales = load_box_images(anns, 80, ["dot"])
    assert images.shape == (1, 3, 80, 80) and images.dtype == torch.uint8
    assert scales == [2.0]
    torch.testing.assert_close(boxes[0], torch.tensor([[40.0, 10.0, 50.0, 18.0]]))
    assert labels[0].tolist() == [0]


@pytest.mark.data
def test_bccd_reads_its_splits_and_refuses_its_degenerate_boxes_by_default(data_dir: Path) -> None:
    root = bccd_root(data_dir)
    with pytest.raises(DataError, match="xmax <= xmin or ymax <= ymin"):
        read_boxes(root)
    with pytest.warns(UserWarning, match="dropped"):
        trainval = read_boxes(root, split="trainval", drop_bad=True)
    test = read_boxes(root, split="test", drop_bad=True)
    assert (len(trainval), len(test)) == (292, 72)
    assert class_names(trainval) == ["Platelets", "RBC", "WBC"]
    assert {a.image.name for a in trainval}.isdisjoint({a.image.name for a in test})
