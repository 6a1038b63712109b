"""The trainer and ``detres eval --config`` (``tools/eval.py``) build their evaluator with the same
function, and score the same weights identically; ``--eval-only`` goes through it too."""
from __future__ import annotations

import contextlib
import io
import json

import torch

import detres.evaluation.from_config as from_config
from detres.cli.eval import main as eval_main
from detres.engine import Trainer
from detres.engine.evaluation import eval_only
from detres.evaluation import STAT_NAMES


def test_trainer_and_eval_cli_share_the_evaluator_builder(make_cfg, tmp_path, monkeypatch):
    calls: list[tuple[str, str]] = []
    real = from_config.build_evaluator

    def recording(cfg, dataset, output_dir=None, **overrides):
        calls.append((type(dataset).__name__, str(dataset.ann_file)))
        return real(cfg, dataset, output_dir, **overrides)

    monkeypatch.setattr(from_config, "build_evaluator", recording)
    cfg = make_cfg("ev", with_val=True, max_iter=1)
    trainer = Trainer(cfg)
    stats = trainer.evaluate()
    assert len(calls) == 1 and sorted(STAT_NAMES) == sorted(k for k in stats if k in STAT_NAMES)

    weights = tmp_path / "w.pth"
    torch.save({"model": trainer.model.state_dict()}, weights)
    out = tmp_path / "metrics.json"
    with contextlib.redirect_stdout(io.StringIO()):
        rc = eval_main(["--config", str(tmp_path / "ev.yaml"), "--weights", str(weights), "--output", str(out),
                        "--no-progress"])
    assert rc == 0 and len(calls) == 2 and calls[0] == calls[1]
    cli_stats = json.loads(out.read_text())
    # Same weights, same loader, same evaluator: the same numbers to the last digit.
    assert {k: cli_stats[k] for k in STAT_NAMES} == {k: stats[k] for k in STAT_NAMES}
    assert cli_stats["per_category"] == stats["per_category"]

    only = eval_only(cfg, str(weights))
    assert len(calls) == 3 and only["AP"] == stats["AP"]
    assert json.loads((tmp_path / "ev" / "eval_only.json").read_text())["weights"] == str(weights)
