"""A config written with DETRHead's former flat keys fails at load time naming each key's new place.

Needs the ``moved_keys`` hook of ``detres/config/validate.py`` (issue 16, another branch): on a branch
without it these tests fail with "'DETRHead' has no argument ..." instead.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import detres
from detres.config import ConfigError
from detres.modeling.heads.detr import DETRHead

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "detr" / "detr_r50_150e_coco.yaml"
OLD_VALUES = {"activation": "relu", "pre_norm": False}


@pytest.mark.parametrize("old,new", sorted(DETRHead.moved_keys.items()))
def test_flat_head_key_names_its_new_place(tmp_path: Path, old: str, new: str) -> None:
    value = OLD_VALUES.get(old, 1)
    cfg = tmp_path / "old_detr.yaml"
    cfg.write_text(f"_base_: [{CONFIG.as_posix()}]\nmodel:\n  head:\n    {old}: {value!r}\n".replace("'", ""))
    with pytest.raises(ConfigError, match=rf"{re.escape(old)} moved: it is now (model\.head\.)?{re.escape(new)}"):
        detres.load_config(cfg)


def test_moved_keys_cover_the_former_signature() -> None:
    # The former DETRHead(...) keyword arguments that are no longer head keys.
    former = {"hidden_dim", "nheads", "enc_layers", "dec_layers", "ffn_dim", "dropout", "pre_norm", "activation",
              "cost_class", "cost_bbox", "cost_giou", "ce_loss_coef", "bbox_loss_coef", "giou_loss_coef", "eos_coef"}
    assert set(DETRHead.moved_keys) == former
