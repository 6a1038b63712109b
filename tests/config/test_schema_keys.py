"""Every key the config schema accepts is read by some code: no key is accepted and then ignored."""
from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from detres.config import ConfigError, load_config
from detres.config.schema import TOP_LEVEL, DataConfig, EvalConfig, TrainConfig
from detres.evaluation import COCOEvaluator

PACKAGE = Path(__file__).resolve().parents[2] / "detres"
SOURCES = {p: p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "schema.py"}
SECTIONS = {"train": TrainConfig, "eval": EvalConfig, "data": DataConfig}
KEYS = [(s, f.name) for s, c in SECTIONS.items() for f in dataclasses.fields(c)]


def _readers(key: str) -> list[str]:
    """Package files that read ``key`` as a mapping item, attribute or ``get`` / keyword argument."""
    pat = re.compile(rf"""\[["']{key}["']\]|\.get\(["']{key}["']|\.{key}\b|_cfg_get\([^)]*["']{key}["']""")
    return [str(p.relative_to(PACKAGE)) for p, text in SOURCES.items() if pat.search(text)]


@pytest.mark.parametrize(("section", "key"), KEYS, ids=[f"{s}.{k}" for s, k in KEYS])
def test_every_schema_key_is_read(section: str, key: str) -> None:
    if section == "eval" and key != "batch_size":
        # eval keys reach the evaluator as keyword arguments (build_evaluator filters by its signature)
        assert key in inspect.signature(COCOEvaluator).parameters, key
        return
    assert _readers(key), f"{section}.{key}: accepted by detres/config/schema.py but read nowhere in detres/"


def test_top_level_keys_are_read() -> None:
    for key in TOP_LEVEL:
        assert _readers(key), key


@pytest.mark.parametrize("key", sorted(EvalConfig.removed_keys))
def test_removed_eval_keys_are_refused(repo_root: Path, tmp_path: Path, key: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"_base_: [{repo_root}/configs/examples/shapes_faster_rcnn.yaml]\neval:\n  {key}: 7\n")
    with pytest.raises(ConfigError, match=rf"eval\.{key}: no longer a config key"):
        load_config(cfg)
    # an older run folder's config.yaml holds the old default: it still loads
    default = EvalConfig.removed_keys[key][0]
    cfg.write_text(f"_base_: [{repo_root}/configs/examples/shapes_faster_rcnn.yaml]\neval:\n"
                   f"  {key}: {'null' if default is None else str(default).lower()}\n")
    assert load_config(cfg).eval.batch_size == 4
