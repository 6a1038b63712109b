"""BCCD through VocDetection, our converted COCO json and the third-party COCO json: same boxes and labels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detres.cli.convert_dataset import main as convert_main
from detres.data import CocoDetection, VocDetection

NAMES = ["RBC", "WBC", "Platelets"]


def _by_file(ds) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {Path(r["file_name"]).name: (r["boxes"], r["labels"]) for r in ds.records}


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_bccd_voc_equals_converted_coco(shared_dir: Path, tmp_path: Path, split: str) -> None:
    root = shared_dir / "data" / "bccd" / "BCCD"
    voc = VocDetection(str(root), split, class_names=NAMES)
    out = tmp_path / f"{split}.json"
    assert convert_main(["--from", "voc", "--root", str(root), "--split", split, "--out", str(out),
                         "--class-names", *NAMES]) == 0
    ours = CocoDetection(str(out), str(root / "JPEGImages"))
    third = CocoDetection(str(shared_dir / "data" / "bccd" / "third_party_coco_conversion_yukkyo_voc2coco"
                              / f"bccd_{split}_cocoformat.json"), str(root / "JPEGImages"))
    a, b, c = _by_file(voc), _by_file(ours), _by_file(third)
    assert len(a) == {"train": 205, "val": 87, "test": 72}[split]
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        for other in (b, c):
            np.testing.assert_array_equal(a[k][0], other[k][0])
            np.testing.assert_array_equal(a[k][1], other[k][1])
    # identical samples through __getitem__ too
    s1, s2 = voc[0], ours[0]
    assert s1.file_name == s2.file_name and s1.image.shape == (3, 480, 640)
    assert (s1.image == s2.image).all() and (s1.instances.boxes == s2.instances.boxes).all()


def test_bccd_degenerate_boxes_become_one_pixel(shared_dir: Path) -> None:
    """xmin == xmax in VOC's 1-based inclusive convention is a 1x1 box: kept, as in the COCO json."""
    root = shared_dir / "data" / "bccd" / "BCCD"
    voc = VocDetection(str(root), "trainval", class_names=NAMES)
    voc_test = VocDetection(str(root), "test", class_names=NAMES)
    recs = [r for ds in (voc, voc_test) for r in ds.records]
    tiny = {Path(r["file_name"]).stem: r["boxes"][(r["boxes"][:, 2] - r["boxes"][:, 0]) <= 1]
            for r in recs if ((r["boxes"][:, 2] - r["boxes"][:, 0]) <= 1).any()}
    assert sorted(tiny) == ["BloodImage_00338", "BloodImage_00343"]
    for boxes in tiny.values():
        np.testing.assert_array_equal(boxes[:, 2:] - boxes[:, :2], [[1, 1]])
    assert sum(len(r["boxes"]) for r in recs) == 4888
    third = json.loads((shared_dir / "data/bccd/third_party_coco_conversion_yukkyo_voc2coco/"
                        "bccd_train_cocoformat.json").read_text())
    assert isinstance(third["images"][0]["id"], str)  # handled by renumbering, see CocoDetection


def test_yolo_reading_matches_voc(shared_dir: Path, tmp_path: Path) -> None:
    """BCCD written as YOLO txt reads back to the VOC boxes (up to float rounding) via YoloDetection."""
    import os

    from detres.data import YoloDetection

    voc = VocDetection(str(shared_dir / "data/bccd/BCCD"), "val", class_names=NAMES)
    (tmp_path / "images/val").mkdir(parents=True)
    (tmp_path / "labels/val").mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("\n".join(NAMES))
    for r in voc.records[:10]:
        os.symlink(r["file_name"], tmp_path / "images/val" / Path(r["file_name"]).name)
        b, w, h = r["boxes"], r["width"], r["height"]
        lines = [f"{l} {(x0 + x1) / 2 / w:.8f} {(y0 + y1) / 2 / h:.8f} {(x1 - x0) / w:.8f} {(y1 - y0) / h:.8f}"
                 for l, (x0, y0, x1, y1) in zip(r["labels"].tolist(), b.tolist())]
        (tmp_path / "labels/val" / (Path(r["file_name"]).stem + ".txt")).write_text("\n".join(lines))
    yolo = YoloDetection(str(tmp_path), "val")
    assert yolo.meta.class_names == NAMES and len(yolo) == 10
    for a, b in zip(voc.records[:10], yolo.records):
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3)
        np.testing.assert_array_equal(a["labels"], b["labels"])
    out = tmp_path / "y.json"
    assert convert_main(["--from", "yolo", "--root", str(tmp_path), "--split", "val", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["annotations"]) == sum(len(r["boxes"]) for r in yolo.records)


def test_voc_coco_view_for_the_evaluator(shared_dir: Path) -> None:
    voc = VocDetection(str(shared_dir / "data/bccd/BCCD"), "test", class_names=NAMES)
    coco = voc.coco
    assert len(coco.getImgIds()) == 72 and sorted(coco.getCatIds()) == [1, 2, 3]
    s = voc[0]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[s.image_id]))
    xyxy = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns])
    np.testing.assert_array_equal(xyxy, s.instances.boxes.numpy())
    assert [voc.meta.label_of(a["category_id"]) for a in anns] == s.instances.labels.tolist()
