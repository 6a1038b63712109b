"""The shape of the house (DESIGN.md): imports point one way, down the layers, with no cycle between
packages; the registry imports none of the packages that register into it."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "detres"

#: Layer of each package (module) under detres/, bottom first; a module may import its own layer and below.
LAYERS = {
    "structures": 0, "registry": 0, "config": 0, "utils": 0,
    "modeling": 1, "data": 1, "checkpoint": 1,
    "engine": 2, "evaluation": 2, "export": 2, "runtime": 2, "benchmark": 2, "predictor": 2,
    "cli": 3,
}
#: Same-layer imports that DESIGN.md forbids outright.
FORBIDDEN = {("evaluation", "engine"), ("modeling", "engine"), ("benchmark", "cli")}


def _imports(path: Path) -> set[str]:
    """Every ``detres.<pkg>`` a file imports (also inside functions), as ``<pkg>``."""
    mod_parts = list(path.relative_to(REPO).with_suffix("").parts)
    base = mod_parts if path.name == "__init__.py" else mod_parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            prefix = base[: len(base) - node.level + 1] if node.level else []
            mod = ".".join(prefix + ([node.module] if node.module else []))
            names = [mod] + ([f"{mod}.{a.name}" for a in node.names] if mod == "detres" else [])
        for n in names:
            parts = n.split(".")
            if parts[0] == "detres" and len(parts) > 1:
                found.add(parts[1])
    return found


def _package(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for path in sorted(PKG.rglob("*.py")):
        if path == PKG / "__init__.py":  # `import detres` pulls every package in (registrations)
            continue
        src = _package(path)
        assert src in LAYERS, f"{path}: package '{src}' has no layer in tests/test_layers.py (DESIGN.md lists them)"
        for dst in _imports(path):
            if dst in LAYERS and dst != src and (LAYERS[dst] > LAYERS[src] or (src, dst) in FORBIDDEN):
                wrong.append(f"{path.relative_to(REPO)} imports detres.{dst}")
    assert not wrong, "imports pointing up (see DESIGN.md, 'The shape of the house'):\n" + "\n".join(wrong)


def test_no_import_cycle_between_packages() -> None:
    tool = REPO.parent / "shared" / "tools" / "layers.py"
    if not tool.is_file():
        pytest.skip(f"{tool} not found: the layers tool lives in ../shared next to the repository")
    run = subprocess.run([sys.executable, str(tool)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "0 import cycle(s)" in run.stdout, run.stdout + run.stderr


def test_registry_module_imports_no_registering_package() -> None:
    assert _imports(PKG / "registry.py") == set()
    assert "evaluation" in _imports(PKG / "engine" / "trainer.py")  # the scan sees imports at all
    # Loaded on its own (without the detres package's __init__), it pulls in no detres module at all.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('registry_alone', {str(PKG / 'registry.py')!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "assert mod.locate('torch.nn.Conv2d').__name__ == 'Conv2d'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'detres'))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_importing_anything_under_detres_registers_every_builtin() -> None:
    code = (
        "import detres.registry as r\n"
        "print(' '.join(sorted(n for reg in r.ALL_REGISTRIES for n in reg.list())))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    names = set(run.stdout.split())
    assert {"ResNet", "TimmBackbone", "FPN", "FasterRCNN", "DETR", "CocoDetection", "VocDetection",
            "ResizeShortestEdge", "RandomFlip"} <= names
