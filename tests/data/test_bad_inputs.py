"""Bad inputs: each gives an error or warning naming the file and id; nothing is skipped silently."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from detres.cli.check_dataset import main as check_main
from detres.data import CocoDetection, ImageReadError


def _copy(shapes_dir: Path, tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "val"
    shutil.copytree(shapes_dir / "val", root)
    return root, json.loads((shapes_dir / "annotations" / "instances_val.json").read_text())


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(data))
    return p


def test_clean_dataset_checks_clean(shapes_dir: Path) -> None:
    assert check_main(["--ann", str(shapes_dir / "annotations/instances_val.json"), "--images", str(shapes_dir / "val")]) == 0


def test_truncated_jpeg(shapes_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, data = _copy(shapes_dir, tmp_path)
    f = root / data["images"][2]["file_name"]
    f.write_bytes(f.read_bytes()[:-600])
    ann = _write(tmp_path, data)
    ds = CocoDetection(str(ann), str(root), filter_empty=False)
    idx = next(i for i, r in enumerate(ds.records) if r["image_id"] == data["images"][2]["id"])
    with pytest.raises(ImageReadError, match=rf"{f.name}.*image id {data['images'][2]['id']}.*truncated"):
        ds[idx]
    assert check_main(["--ann", str(ann), "--images", str(root)]) == 1
    assert f"image id {data['images'][2]['id']}" in capsys.readouterr().out


def test_missing_image_raise_or_skip_with_warning(shapes_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, data = _copy(shapes_dir, tmp_path)
    (root / data["images"][0]["file_name"]).unlink()
    ann = _write(tmp_path, data)
    ds = CocoDetection(str(ann), str(root), filter_empty=False)
    with pytest.raises(ImageReadError, match=rf"{data['images'][0]['file_name']}.*image id 1.*not found"):
        ds[0]
    skip = CocoDetection(str(ann), str(root), filter_empty=False, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="detres.data"):
        s = skip[0]
    assert s.image_id == 2 and skip.num_skipped == 1
    assert "image id 1" in caplog.text and "skipped so far" in caplog.text


@pytest.mark.parametrize("section,key", [("annotations", "bbox"), ("images", "file_name"), ("annotations", "category_id")])
def test_json_missing_key(shapes_dir: Path, tmp_path: Path, section: str, key: str) -> None:
    root, data = _copy(shapes_dir, tmp_path)
    del data[section][1][key]
    ann = _write(tmp_path, data)
    with pytest.raises(ValueError, match=rf"{section}\[1\] \(id {data[section][1]['id']}.*no '{key}'"):
        CocoDetection(str(ann), str(root))
    assert check_main(["--ann", str(ann), "--images", str(root)]) == 1


def test_negative_width_box_dropped_counted_named(shapes_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, data = _copy(shapes_dir, tmp_path)
    bad = data["annotations"][0]
    bad["bbox"][2] = -5
    ann = _write(tmp_path, data)
    with caplog.at_level(logging.WARNING, logger="detres.data"):
        ds = CocoDetection(str(ann), str(root), filter_empty=False)
    assert ds.box_stats.counts == {"dropped_degenerate": 1}
    img = next(i for i in data["images"] if i["id"] == bad["image_id"])
    assert f"{bad['id']} ({img['file_name']})" in caplog.text
    assert sum(len(r["boxes"]) for r in ds.records) == len(data["annotations"]) - 1
    assert check_main(["--ann", str(ann), "--images", str(root)]) == 1


def test_out_of_image_box_clipped_and_counted(shapes_dir: Path, tmp_path: Path) -> None:
    root, data = _copy(shapes_dir, tmp_path)
    a = data["annotations"][0]
    img = next(i for i in data["images"] if i["id"] == a["image_id"])
    a["bbox"] = [img["width"] - 10, 0, 50, 20]
    data["annotations"][1]["bbox"] = [img["width"] + 5, 0, 10, 10]
    data["annotations"][1]["image_id"] = img["id"]
    ds = CocoDetection(str(_write(tmp_path, data)), str(root), filter_empty=False)
    assert ds.box_stats.counts == {"clipped_to_image": 1, "dropped_outside_image": 1}
    rec = next(r for r in ds.records if r["image_id"] == img["id"])
    assert rec["boxes"][list(rec["ann_ids"]).index(a["id"])].tolist() == [img["width"] - 10, 0, img["width"], 20]


def test_unknown_category_id(shapes_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, data = _copy(shapes_dir, tmp_path)
    data["annotations"][3]["category_id"] = 99
    ann = _write(tmp_path, data)
    aid = data["annotations"][3]["id"]
    with pytest.raises(ValueError, match=rf"annotation {aid} .*unknown category_id 99"):
        CocoDetection(str(ann), str(root))
    assert check_main(["--ann", str(ann), "--images", str(root)]) == 1
    assert f"annotation {aid}" in capsys.readouterr().out


def test_check_dataset_cannot_run(tmp_path: Path) -> None:
    assert check_main(["--ann", str(tmp_path / "nope.json")]) == 2
