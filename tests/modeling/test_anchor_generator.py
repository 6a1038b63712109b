"""AnchorGenerator equals torchvision's AnchorGenerator (rounded cells, strides from the image)."""
from __future__ import annotations

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detres.modeling.heads.rpn import AnchorGenerator


def test_matches_torchvision_including_p6_stride() -> None:
    sizes = [(32,), (64,), (128,), (256,), (512,)]
    ours = AnchorGenerator(sizes, [(0.5, 1.0, 2.0)], [4, 8, 16, 32, 64], round_anchors=True, strides_from_image=True)
    tv = TVAnchorGenerator(tuple(sizes), ((0.5, 1.0, 2.0),) * 5)
    h, w = 352, 224  # p6 is 6x4: torchvision's stride there is 352 // 6 = 58, not 64
    shapes = [(88, 56), (44, 28), (22, 14), (11, 7), (6, 4)]
    feats = [torch.zeros(1, 1, *s) for s in shapes]
    ref = tv(ImageList(torch.zeros(1, 3, h, w), [(h, w)]), feats)[0]
    got = torch.cat(ours(shapes, (h, w)))
    assert torch.equal(got, ref)


def test_detectron2_cells_and_offset() -> None:
    gen = AnchorGenerator([(32,)], [(0.5, 1.0, 2.0)], [8], offset=0.5)
    a = gen([(2, 3)], (16, 24))[0]
    assert a.shape == (2 * 3 * 3, 4)
    wh = a[:3, 2:] - a[:3, :2]
    torch.testing.assert_close(wh[:, 0] * wh[:, 1], torch.full((3,), 1024.0))
    torch.testing.assert_close(wh[:, 1] / wh[:, 0], torch.tensor([0.5, 1.0, 2.0]))
    centres = (a[::3, :2] + a[::3, 2:]) / 2
    torch.testing.assert_close(centres[:4], torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [4.0, 12.0]]))
