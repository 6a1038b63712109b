"""``tools/train.py`` entry: ``--resume`` before overrides, ``--eval-only --weights W`` (EMA weights first)."""
from __future__ import annotations

import json
from pathlib import Path

from detres.cli.train import main
from detres.config import load_config
from tests.engine.conftest import assert_evaluation_of


def test_train_then_resume_then_eval_only(make_cfg, tmp_path):
    make_cfg("cli", max_iter=2, ema=True, ema_warmup=0, ema_decay=0.5)  # writes tmp/cli.yaml
    cfg_path = str(tmp_path / "cli.yaml")
    assert main(["--config", cfg_path]) == 0
    out = tmp_path / "cli"
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth" and (out / "log.txt").is_file()
    # `--resume key=value`: the override is not taken for a checkpoint path
    assert main(["--config", cfg_path, "--resume", "train.max_iter=3"]) == 0
    iters = [json.loads(x)["iter"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert iters == [1, 2, 3]
    make_cfg("cli_eval", with_val=True)  # same model, with data.val
    weights = str(out / "model_final.pth")
    assert main(["--config", str(tmp_path / "cli_eval.yaml"), "--eval-only", "--weights", weights]) == 0
    res = json.loads((tmp_path / "cli_eval" / "eval_only.json").read_text())
    assert res["weights"] == weights
    assert_evaluation_of(res, load_config(tmp_path / "cli_eval.yaml"), Path(weights))  # the EMA weights of W
