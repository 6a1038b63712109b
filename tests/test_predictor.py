"""detres.Predictor: config + weights loaded once, numpy / PIL / path inputs, optimized by default."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from detres import Predictor, build_model, load_config
from detres.benchmark.reference import compare_detections

CFG = ("configs/faster_rcnn/faster_rcnn_r18_fpn_1x_coco.yaml", ["model.neck.out_channels=64", "model.input.min_size_test=160",
                                                                 "model.input.max_size_test=224"])


def _weights(tmp_path: Path) -> Path:
    """Random weights with a confident class head, so that the detector returns boxes."""
    torch.manual_seed(0)
    model = build_model(load_config(*CFG))
    cls = model.roi_heads.box_predictor.cls_score
    with torch.no_grad():
        cls.weight.copy_(torch.randn(cls.weight.shape) * 0.01)
    path = tmp_path / "w.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


def test_predictor_inputs_and_optimized_equals_plain(tmp_path: Path) -> None:
    weights = _weights(tmp_path)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgb[:, :, ::-1])
    fast = Predictor(CFG[0], weights, overrides=CFG[1], device="cpu")
    plain = Predictor(CFG[0], weights, overrides=CFG[1], device="cpu", optimize=False)
    from detres.runtime import BACKENDS
    from detres.runtime.convs import PointwiseConv2d

    assert list(fast.model.runtime_passes) == list(BACKENDS["cpu"])
    assert any(isinstance(m, PointwiseConv2d) for m in fast.model.modules())
    assert not any(isinstance(m, PointwiseConv2d) for m in plain.model.modules())
    outs = fast([rgb, Image.fromarray(rgb), str(tmp_path / "a.png")])
    ref = plain(rgb)
    assert len(outs) == 3 and len(ref) == 1 and len(ref[0]["boxes"]) > 0
    as_tensors = [{k: torch.from_numpy(np.asarray(d[k])) for k in ("boxes", "scores", "labels")} for d in (ref[0], *outs)]
    for out in as_tensors[1:]:  # the same image three ways, optimized model: the plain model's detections
        # measured 2.3e-3 px / 4.8e-7 (docs/getting_started.md): the bounds are about 2x that
        cmp = compare_detections([out], [as_tensors[0]], label_offset=0, atol=5e-3, score_atol=1e-6)
        assert cmp["identical"], cmp
    assert all(len(o["class_names"]) == len(o["labels"]) for o in outs)


def test_read_only_array_no_warning() -> None:
    import warnings

    pred = Predictor(*CFG[:1], overrides=CFG[1], device="cpu", optimize=False)
    arr = np.frombuffer(np.zeros(64 * 80 * 3, np.uint8).tobytes(), np.uint8).reshape(64, 80, 3)
    assert not arr.flags.writeable
    from detres.predictor import to_rgb_array

    assert to_rgb_array(arr).flags.writeable and to_rgb_array(Image.fromarray(np.zeros((4, 4, 3), np.uint8))).flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy's "not writable" UserWarning would fail here
        out = pred(arr)
    assert len(out) == 1 and out[0]["boxes"].shape[1:] == (4,)
