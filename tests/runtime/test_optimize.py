"""``detres.runtime.optimize``: backends, pass lists, errors, export after the export-safe passes, and
the reference package free of runtime tricks."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import detres
from detres.runtime import BACKENDS, PASSES, optimize
from tests.runtime.models import images, max_rel_diff, tiny_detr, tiny_frcnn

MODELING = Path(__file__).resolve().parents[2] / "detres" / "modeling"


def test_runtime_is_an_attribute_of_detres() -> None:
    assert detres.runtime.optimize is optimize


def test_export_backend_folds_bn_only_and_still_traces() -> None:
    """backend="export": traceable passes only; every graph of Faster R-CNN and DETR still exports with
    torch.export and gives the reference outputs."""
    from detres.export import export_program, random_images, record_graph_inputs

    for build in (tiny_frcnn, tiny_detr):
        model = build()
        inputs = record_graph_inputs(model, random_images([(128, 160), (128, 160)], seed=0))
        with torch.no_grad():
            ref = {n: dict(zip(s.output_names, s.module(*inputs[n]))) for n, s in model.graphs().items()}
        optimize(model, backend="export")
        assert list(model.runtime_passes) == list(BACKENDS["export"]) == ["rep_vgg", "fold_bn"]
        assert model.runtime_passes["rep_vgg"] == 0  # no RepVGG blocks in these detectors
        assert model.runtime_passes["fold_bn"] == 20
        for name, spec in model.graphs().items():
            prog = export_program(spec, inputs[name], dynamic=False)
            with torch.no_grad():
                out = dict(zip(spec.output_names, prog.module()(*inputs[name])))
            assert max_rel_diff(out, ref[name]) < 1e-4, name


def test_unknown_backend_or_pass_and_untraceable_export_are_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1))
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        optimize(model, backend="tpu")
    with pytest.raises(ValueError, match=r"unknown passes \['fuse'\].*fold_bn"):
        optimize(model, passes=["fuse"])
    with pytest.raises(ValueError, match=r"\['winograd'\] do not trace"):
        optimize(model, backend="export", passes=["fold_bn", "winograd"])


def test_passes_run_in_table_order_and_empty_list_only_sets_eval() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).train()
    optimize(model, passes=[])
    assert model.runtime_passes == {} and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert isinstance(model[1], torch.nn.BatchNorm2d)
    optimize(model, passes=["pointwise", "fold_bn"])
    assert list(model.runtime_passes) == ["fold_bn", "pointwise"] and list(model.runtime_passes.values()) == [1, 1]
    assert set(PASSES) >= set(BACKENDS["cpu"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_only_passes_are_skipped_on_cuda() -> None:
    model = tiny_frcnn().cuda()
    ims = [im.cuda() for im in images((192, 256))]
    with torch.inference_mode():
        ref = model(ims)
    optimize(model)
    assert all(model.runtime_passes[n] == 0 for n, p in PASSES.items() if p.cpu_only and n in model.runtime_passes)
    with torch.inference_mode():
        out = model(ims)
    assert len(out[0]["boxes"]) == len(ref[0]["boxes"])


def test_modeling_holds_no_runtime_tricks() -> None:
    """The reference package: no private torch.ops, no __class__ swaps, no state-dict hooks."""
    banned = re.compile(r"torch\.ops\.|__class__\s*=(?!=)|register_(load_)?state_dict|_register_(load_)?state_dict")
    hits = [f"{p.relative_to(MODELING.parent.parent)}:{i}: {line.strip()}"
            for p in sorted(MODELING.rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert sorted(MODELING.rglob("*.py")), MODELING
    assert not hits, "\n".join(hits)
