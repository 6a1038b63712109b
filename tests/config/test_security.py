"""A config is data: ``_target_`` resolves to registered names, allow-listed classes / vetted builders and
modules the user trusts through ``custom_imports``; anything else is refused before anything is built."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from detres import build_model, load_config
from detres.config import ConfigError
from detres.registry import TargetNotAllowedError, import_modules, instantiate, locate

REPO = Path(__file__).resolve().parents[2]


def _attack(marker: Path) -> str:
    """A model node that would create ``marker`` if it ran."""
    return f"model: {{_target_: os.system, command: 'touch {marker}'}}\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_os_system_refused_by_load_config_and_build_model(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    cfg_path = _write(tmp_path / "evil.yaml", _attack(marker))
    with pytest.raises(ConfigError) as e:
        load_config(cfg_path)
    msg = str(e.value)
    assert "model._target_" in msg and "'os.system'" in msg and "custom_imports" in msg
    # build_model on an unvalidated config refuses too (instantiate checks every target first).
    with pytest.raises(TargetNotAllowedError, match="os.system"):
        build_model(OmegaConf.create({"model": {"_target_": "os.system", "command": f"touch {marker}"}}))
    with pytest.raises(TargetNotAllowedError, match=r"backbone\._target_: .*'os.system'"):
        instantiate({"_target_": "torch.nn.Sequential", "backbone": {"_target_": "os.system", "command": "x"}})
    assert not marker.exists()


def test_os_system_refused_by_train_tool(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    cfg_path = _write(tmp_path / "evil.yaml", _attack(marker))
    run = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--config", str(cfg_path),
                          f"train.output_dir={tmp_path / 'out'}"],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert run.returncode == 2, run.stdout + run.stderr
    assert "model._target_" in run.stderr and "os.system" in run.stderr
    assert not marker.exists()


def test_os_system_refused_by_predictor_on_a_run_folder(tmp_path: Path) -> None:
    from detres import Predictor

    marker = tmp_path / "pwned"
    run_dir = tmp_path / "downloaded_run"
    run_dir.mkdir()
    _write(run_dir / "config.yaml", "num_classes: 3\n" + _attack(marker))
    torch.save({"model": {}}, run_dir / "model_final.pth")
    with pytest.raises(ConfigError, match="os.system"):
        Predictor(run_dir / "config.yaml", run_dir / "model_final.pth")
    assert not marker.exists()


@pytest.mark.parametrize("target", [
    "torch.hub.load", "torch.load", "torch.save", "torch.os.system",
    "torch.nn.parallel.distributed.os.system",  # os reached through an allowed package
    "torchvision.ops.misc.os.system", "torch.nn.modules.module.torch.load",
    "torch.nn.functional.relu",  # a function of an allowed package that is not a builder
    "detres.config.save_config",  # a detres function not marked as a config builder
    "detres.registry.importlib.import_module", "torch.nn.modules.module.OrderedDict",  # a class defined elsewhere
    "torch.nn.__builtins__", "builtins.eval", "subprocess.Popen",
])
def test_targets_that_are_not_classes_or_builders_are_refused(tmp_path: Path, target: str) -> None:
    with pytest.raises(KeyError, match=target.replace(".", r"\.")):
        locate(target)
    cfg_path = _write(tmp_path / "c.yaml", f"optimizer: {{_target_: {target}, lr: 0.1}}\n")
    with pytest.raises(ConfigError, match=r"optimizer\._target_"):
        load_config(cfg_path)


def test_allowed_targets_resolve() -> None:
    assert locate("torch.optim.AdamW") is torch.optim.AdamW
    assert locate("torch.nn.Conv2d") is torch.nn.Conv2d
    assert locate("torchvision.ops.MultiScaleRoIAlign").__name__ == "MultiScaleRoIAlign"
    assert locate("torchvision.models.resnet18").__name__ == "resnet18"  # torchvision's registered builder
    assert locate("detres.data.build_train_loader").__name__ == "build_train_loader"  # marked config builder


def test_train_loader_path_is_checked(tmp_path: Path) -> None:
    cfg_path = _write(tmp_path / "c.yaml", "train: {train_loader: os.system}\n")
    with pytest.raises(ConfigError, match=r"train\.train_loader: .*'os.system'"):
        load_config(cfg_path)


USER_MODULE = '''
import os
import subprocess
import torch

def build_head(width: int = 2):
    return torch.nn.Linear(width, width)

class Tiny(torch.nn.Module):
    def __init__(self, width: int = 2):
        super().__init__()
        self.fc = torch.nn.Linear(width, width)
'''


def test_custom_imports_trusts_the_users_module_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "detres_sec_user_mod.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "pwned"
    cfg_path = _write(tmp_path / "c.yaml", """
        custom_imports: [detres_sec_user_mod]
        model: {_target_: detres_sec_user_mod.Tiny, width: 3}
        optimizer: {_target_: detres_sec_user_mod.build_head, width: 4}
    """)
    cfg = load_config(cfg_path)
    assert instantiate(cfg.model).fc.in_features == 3
    assert instantiate(cfg.optimizer).in_features == 4  # a function the user's module defines
    for reach in ("detres_sec_user_mod.os.system", "detres_sec_user_mod.subprocess.Popen",
                  "detres_sec_user_mod.torch.load"):
        bad = _write(tmp_path / "bad.yaml", f"custom_imports: [detres_sec_user_mod]\n"
                                            f"model: {{_target_: {reach}, args: 'touch {marker}'}}\n")
        with pytest.raises(ConfigError, match="not a class or function defined in the trusted module"):
            load_config(bad)
    assert not marker.exists()


@pytest.mark.parametrize("module", ["os", "subprocess", "builtins", "os.path"])
def test_custom_imports_of_the_standard_library_is_refused(tmp_path: Path, module: str) -> None:
    cfg_path = _write(tmp_path / "c.yaml", f"custom_imports: [{module}]\nmodel: {{_target_: os.system}}\n")
    with pytest.raises(ImportError, match="standard-library module"):
        load_config(cfg_path)


def test_custom_imports_of_an_allowed_package_trusts_nothing_more() -> None:
    import_modules(["torch"])
    with pytest.raises(TargetNotAllowedError):
        locate("torch.load")
