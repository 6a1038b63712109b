"""Top-k (query, class) detections of sigmoid DETR heads: decoding, box scaling, k larger than Q*K."""
from __future__ import annotations

import pytest
import torch

from detres.modeling.layers.topk_detections import sigmoid_topk_detections, topk_detections


def test_sigmoid_topk_decodes_query_and_label() -> None:
    logits = torch.full((2, 3, 4), -10.0)
    logits[0, 2, 1], logits[0, 0, 3], logits[0, 2, 0] = 3.0, 2.0, 1.0  # one query may give two labels
    logits[1, 1, 2] = 5.0
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]]).repeat(2, 3, 1)
    boxes[0, 2] = torch.tensor([0.25, 0.75, 0.5, 0.5])
    dets = sigmoid_topk_detections(logits, boxes, [(100, 200), (50, 80)], k=3)
    assert dets[0]["labels"].tolist() == [1, 3, 0] and dets[0]["labels"].dtype == torch.int64
    torch.testing.assert_close(dets[0]["scores"], torch.tensor([3.0, 2.0, 1.0]).sigmoid())
    torch.testing.assert_close(dets[0]["boxes"][0], torch.tensor([0.0, 50.0, 100.0, 100.0]))  # query 2
    torch.testing.assert_close(dets[0]["boxes"][1], torch.tensor([80.0, 30.0, 120.0, 70.0]))  # query 0
    assert dets[1]["labels"][0].item() == 2
    torch.testing.assert_close(dets[1]["boxes"][0], torch.tensor([32.0, 15.0, 48.0, 35.0]))


def test_boxes_not_clipped_and_k_capped() -> None:
    boxes = torch.tensor([[[0.95, 0.5, 0.3, 0.2]]])
    dets = topk_detections(torch.tensor([[[0.9, 0.1]]]), boxes, [(10, 10)], k=100)
    assert dets[0]["scores"].numel() == 2  # k capped at Q * K
    assert dets[0]["boxes"][0, 2].item() == pytest.approx(11.0)
    with pytest.raises(ValueError, match="2 sizes"):
        topk_detections(torch.rand(1, 2, 2), torch.rand(1, 2, 4), [(4, 4), (4, 4)], k=1)
