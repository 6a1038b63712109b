"""A results file cannot change the score by being malformed: each rule refuses naming the file, the
detection's index and the field; ``tools/eval.py`` exits 2 and scores a file without importing torch."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from detres.cli.eval import main

GT = {
    "images": [{"id": 0, "width": 100, "height": 100}, {"id": 1, "width": 100, "height": 100}],
    "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
                    {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0}],
    "categories": [{"id": 1, "name": "a"}],
}
GOOD = [{"image_id": 0, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.8}]


def _files(tmp_path: Path, bad_field: str | None = None, value: object = None) -> tuple[Path, Path]:
    dets = json.loads(json.dumps(GOOD)) + [{"image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.95}]
    if bad_field == "w":
        dets[2]["bbox"][2] = value
    elif bad_field == "h":
        dets[2]["bbox"][3] = value
    elif bad_field is not None:
        dets[2][bad_field] = value
    gt, res = tmp_path / "gt.json", tmp_path / "dets.json"
    gt.write_text(json.dumps(GT))
    res.write_text(json.dumps(dets))
    return gt, res


def _score(gt: Path, res: Path) -> float:
    out = gt.parent / "m.json"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--gt", str(gt), "--results", str(res), "--output", str(out)]) == 0
    return json.loads(out.read_text())["AP"]


def _refused(tmp_path: Path, field: str, value: object, names: str) -> None:
    gt, res = _files(tmp_path, field, value)
    with pytest.raises(ValueError) as e:
        _score(gt, res)
    msg = str(e.value)
    assert str(res) in msg and "detection #2" in msg and f"field '{names}'" in msg, msg


def test_valid_file_with_zero_size_box_is_accepted(tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, res = _files(tmp_path, "w", 0)
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO(str(gt))
        ev = COCOeval(g, g.loadRes(str(res)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert abs(_score(gt, res) - ev.stats[0]) < 1e-12


def test_negative_width_is_refused(tmp_path: Path) -> None:
    # silently ignored before: the high-scoring w<0 box raised AP from 0.5 to 1.0 here
    _refused(tmp_path, "w", -20, "bbox")


def test_negative_height_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "h", -1.5, "bbox")


def test_non_finite_size_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "w", float("inf"), "bbox")


def test_string_in_bbox_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "w", "20", "bbox")


def test_fractional_image_id_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "image_id", 0.9, "image_id")  # turned into 0 before


def test_string_image_id_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "image_id", "0", "image_id")


def test_bool_image_id_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "image_id", True, "image_id")


def test_fractional_category_id_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "category_id", 1.5, "category_id")


def test_string_score_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "score", "abc", "score")


def test_non_finite_score_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "score", float("nan"), "score")


def test_tool_exits_2_and_scores_without_torch(tmp_path: Path, repo_root: Path, shared_dir: Path) -> None:
    """``tools/eval.py --gt --results`` as a process: exit 2 on a bad file; on a shared case exit 0 with
    torch never imported."""
    tool = repo_root / "tools" / "eval.py"
    gt, res = _files(tmp_path, "image_id", 0.9)
    bad = subprocess.run([sys.executable, str(tool), "--gt", str(gt), "--results", str(res)],
                         capture_output=True, text=True, timeout=120, cwd=repo_root)
    assert bad.returncode == 2 and "detection #2: field 'image_id'" in bad.stderr, bad.stderr
    case = shared_dir / "data" / "coco_eval_cases" / "01_cocoapi_val2014_fake100"
    code = ("import runpy, sys\n"
            f"sys.argv = ['eval.py', '--gt', {str(case / 'instances_val2014_100.json')!r}, "
            f"'--results', {str(case / 'instances_val2014_fakebbox100_results.json')!r}]\n"
            "try:\n"
            f"    runpy.run_path({str(tool)!r}, run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\n"
            "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=repo_root)
    assert run.returncode == 0, run.stderr
    assert "Average Precision" in run.stdout and run.stdout.strip().endswith("NO_TORCH"), run.stdout[-300:]
