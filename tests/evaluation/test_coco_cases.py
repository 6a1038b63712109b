"""Every case in ../shared/data/coco_eval_cases through ``detres eval --gt --results``: source numbers
within the source's precision, pycocotools 2.0.11 on the same files to 1e-12."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detres.cli.eval import main
from detres.evaluation import STAT_NAMES, evaluate_results

CASES = "data/coco_eval_cases"


def pycocotools_stats(gt: dict, dets: list) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        g.dataset = copy.deepcopy(gt)
        g.createIndex()
        ev = COCOeval(g, g.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return [float(x) for x in ev.stats]


def run_cli(gt: Path, dt: Path, tmp_path: Path, *extra: str) -> list[float]:
    out = tmp_path / "metrics.json"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--gt", str(gt), "--results", str(dt), "--output", str(out), *extra]) == 0
    m = json.loads(out.read_text())
    assert sorted(m) == sorted([*STAT_NAMES, "per_category"])
    return [m[k] for k in STAT_NAMES]


# (folder, gt, dt, expected key in expected.json or None, tolerance)
SOURCE_CASES = [
    ("01_cocoapi_val2014_fake100", "instances_val2014_100.json", "instances_val2014_fakebbox100_results.json",
     "expected_full_precision", 1e-10),
    ("02_review_odm_sampled_noncrowd", "sampled_gts_bbox_area.json", "sampled_bbox_results.json", "expected_6dp", 1e-6),
    ("03_detectron2_two_images", "gt_annotations.json", "detections.json", "expected_full_precision", 1e-12),
    ("04_torchmetrics_inputs_v2", "gt.json", "detections.json", "expected_3dp", 5e-4),
    ("05_torchmetrics_inputs_v1", "gt.json", "detections.json", "expected_3dp", 5e-4),
    ("06_torchmetrics_docstring_single_box", "gt.json", "detections.json", "expected", 1e-12),
    ("07_mmdet_dummy_perfect", "gt.json", "detections.json", "expected_first6_rounded_4dp", 5e-5),
]


@pytest.mark.parametrize("folder,gt,dt,key,tol", SOURCE_CASES, ids=[c[0][:2] for c in SOURCE_CASES])
def test_source_cases(shared_dir, tmp_path, folder, gt, dt, key, tol):
    d = shared_dir / CASES / folder
    stats = run_cli(d / gt, d / dt, tmp_path)
    expected = json.loads((d / "expected.json").read_text())[key]
    np.testing.assert_allclose(stats[: len(expected)], expected, rtol=0, atol=tol)
    dets = json.loads((d / dt).read_text())
    dets = dets["annotations"] if isinstance(dets, dict) else dets
    ref = pycocotools_stats(json.loads((d / gt).read_text()), dets)
    np.testing.assert_allclose(stats, ref, rtol=0, atol=1e-12)


def test_case01_official_3dp_and_backends_agree(shared_dir, tmp_path):
    d = shared_dir / CASES / "01_cocoapi_val2014_fake100"
    exp = json.loads((d / "expected.json").read_text())["expected_3dp"]
    per_backend = {b: run_cli(d / "instances_val2014_100.json", d / "instances_val2014_fakebbox100_results.json",
                              tmp_path, "--backend", b) for b in ("detres", "faster_coco_eval", "pycocotools")}
    np.testing.assert_allclose(per_backend["detres"], exp, atol=5e-4)
    for b, s in per_backend.items():
        np.testing.assert_allclose(s, per_backend["pycocotools"], rtol=0, atol=1e-12, err_msg=b)


def test_case01_custom_area_ranges(shared_dir, tmp_path):
    d = shared_dir / CASES / "01_cocoapi_val2014_fake100"
    exp = json.loads((d / "expected.json").read_text())["extra_expected_custom_area_ranges"]["values"]
    ranges = {"all": (0, 1e10), "nano": (0, 64), "micro": (64, 256), "small": (256, 1024),
              "medium": (1024, 9216), "large": (9216, 1e10)}
    from detres.evaluation.backends import run_backend
    from detres.evaluation.coco_data import detections, ground_truth
    from detres.evaluation.summary import _mean

    g = ground_truth(d / "instances_val2014_100.json")
    ev = run_backend("detres", g, detections(d / "instances_val2014_fakebbox100_results.json", g), [1, 10, 100], ranges)
    ap = [_mean(ev["precision"][:, :, :, a, 2]) for a in range(1, 6)]
    ar = [_mean(ev["recall"][:, :, a, 2]) for a in range(1, 6)]
    np.testing.assert_allclose(ap, exp[3:8], atol=1e-12)
    np.testing.assert_allclose(ar, exp[11:16], atol=1e-12)


def test_case04_v2_per_class_and_tied_scores(shared_dir):
    d = shared_dir / CASES / "04_torchmetrics_inputs_v2"
    exp = json.loads((d / "expected.json").read_text())
    m = evaluate_results(d / "gt.json", d / "detections.json")
    by_id = {r["id"]: r for r in m["per_category"]}
    for cid, ap in exp["expected_per_class_AP"].items():
        # the source's 0.556 for class 49 is pycocotools' 0.5547 within the source's 1e-2
        assert by_id[int(cid)]["AP"] == pytest.approx(ap, abs=2e-3 if cid == "49" else 5e-4)
    for cid, ar in exp["expected_per_class_AR100"].items():
        assert by_id[int(cid)]["AR100"] == pytest.approx(ar, abs=5e-4)
    assert by_id[49]["AP"] == pytest.approx(0.5547, abs=1e-4)
    # swapping the two detections tied at 0.204 changes AP: file order must be kept (stable sort)
    dets = json.loads((d / "detections.json").read_text())
    tied = [i for i, x in enumerate(dets) if x["score"] == 0.204]
    assert len(tied) == 2
    dets[tied[0]], dets[tied[1]] = dets[tied[1]], dets[tied[0]]
    swapped = evaluate_results(d / "gt.json", dets)
    assert swapped["AP"] == pytest.approx(0.6431, abs=1e-4)


def test_hotcoco_edge_and_zero_ids(shared_dir, tmp_path):
    d = shared_dir / CASES / "08_hotcoco_edge_cases"
    exp = json.loads((d / "expected.json").read_text())["cases"]
    stats = run_cli(d / "edge_gt.json", d / "edge_dt.json", tmp_path)
    np.testing.assert_allclose(stats, exp["edge"]["expected_6dp"], atol=1e-6)
    # 0-based annotation ids: follow pycocotools (id 0 is its 'unmatched' marker), the 0.442 row
    stats = run_cli(d / "zero_gt.json", d / "zero_dt.json", tmp_path)
    np.testing.assert_allclose(stats, exp["zero_ids"]["pycocotools_2.0.11_actual_pycocotools 2.0.11 run_run"], atol=1e-6)
    for name in ("edge", "zero"):
        ref = pycocotools_stats(json.loads((d / f"{name}_gt.json").read_text()),
                                json.loads((d / f"{name}_dt.json").read_text()))
        got = run_cli(d / f"{name}_gt.json", d / f"{name}_dt.json", tmp_path)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_hotcoco_parity_cases(shared_dir, tmp_path):
    d = shared_dir / CASES / "09_hotcoco_parity_edge_cases"
    exp = json.loads((d / "expected.json").read_text())["pycocotools_2.0.11_pycocotools 2.0.11 run_run_NOT_FROM_SOURCE"]
    assert len(exp) == 6
    for name, values in exp.items():
        stats = run_cli(d / f"{name}_gt.json", d / f"{name}_dt.json", tmp_path)
        np.testing.assert_allclose(stats, values, atol=1e-6, err_msg=name)
        ref = pycocotools_stats(json.loads((d / f"{name}_gt.json").read_text()),
                                json.loads((d / f"{name}_dt.json").read_text()))
        np.testing.assert_allclose(stats, ref, rtol=0, atol=1e-12, err_msg=name)
    assert stats and exp["empty_gt"][:6] == [-1.0] * 6 and exp["all_crowd"] == [-1.0] * 12


def _split(path: Path, tmp_path: Path) -> tuple[Path, Path, dict, list]:
    d = json.loads(path.read_text())
    dets = d.pop("detections")
    gt_p, dt_p = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_p.write_text(json.dumps(d))
    dt_p.write_text(json.dumps(dets))
    return gt_p, dt_p, d, dets


def test_adversarial_fixtures(shared_dir, tmp_path):
    d = shared_dir / CASES / "10_hotcoco_adversarial_fixtures"
    expected = json.loads((d / "_pycocotools_2.0.11_stats_computed.json").read_text())
    checked = 0
    for name, values in expected.items():
        if not isinstance(values, list):
            continue
        gt_p, dt_p, gt, dets = _split(d / name, tmp_path)
        stats = run_cli(gt_p, dt_p, tmp_path)
        np.testing.assert_allclose(stats, values, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(stats, pycocotools_stats(gt, dets), rtol=0, atol=1e-12, err_msg=name)
        checked += 1
    assert checked == 67


def test_adversarial_errors_and_empty(shared_dir, tmp_path):
    d = shared_dir / CASES / "10_hotcoco_adversarial_fixtures"
    gt_p, dt_p, _, _ = _split(d / "dt_unknown_image.json", tmp_path)
    with pytest.raises(ValueError, match=r"not in the ground truth .*\[999\]"):
        main(["--gt", str(gt_p), "--results", str(dt_p)])
    # pycocotools' loadRes cannot take an empty list; here it is scored (no GT, no dets: all -1)
    gt_p, dt_p, gt, _ = _split(d / "empty_eval.json", tmp_path)
    assert run_cli(gt_p, dt_p, tmp_path) == [-1.0] * 12
    # GT but no detections: 0 where GT exists, on every backend
    gt6 = shared_dir / CASES / "06_torchmetrics_docstring_single_box" / "gt.json"
    dt_p.write_text("[]")
    stats = run_cli(gt6, dt_p, tmp_path)
    assert stats == [0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0, 0.0]
    for b in ("pycocotools", "faster_coco_eval"):
        assert run_cli(gt6, dt_p, tmp_path, "--backend", b) == stats


def test_bad_results_messages(shared_dir, tmp_path):
    d = shared_dir / CASES / "06_torchmetrics_docstring_single_box"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 0, "category_id": 0, "bbox": [1, 2, 3], "score": 0.5}]))
    with pytest.raises(ValueError, match="bbox"):
        evaluate_results(d / "gt.json", bad)
    bad.write_text(json.dumps([{"image_id": 0, "category_id": 0, "bbox": [1, 2, 3, 4]}]))
    with pytest.raises(ValueError, match="lacks .*score"):
        evaluate_results(d / "gt.json", bad)


def test_subprocess_tools_eval(shared_dir, repo_root, tmp_path):
    d = shared_dir / CASES / "03_detectron2_two_images"
    out = tmp_path / "m.json"
    r = subprocess.run([sys.executable, str(repo_root / "tools/eval.py"), "--gt", str(d / "gt_annotations.json"),
                        "--results", str(d / "detections.json"), "--output", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.750" in r.stdout
    assert json.loads(out.read_text())["AP"] == pytest.approx(0.7504950495049505, abs=1e-12)
