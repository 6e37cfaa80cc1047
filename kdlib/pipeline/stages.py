"""What each stage of a pipeline does, and how its saved model is loaded again without re-running it.

Every stage takes the model the previous stage produced and writes its own into its folder:

========== ========================================== ==============================================================
stage      does                                       writes (and loads from)
========== ========================================== ==============================================================
teacher    trains the teacher (when no checkpoint)    ``model.pt``: a safe checkpoint of its ``state_dict``
distill    any method of :mod:`kdlib.methods`         ``model.pt``
prune      Torch-Pruning channels + KD fine-tune      ``pruned.pt``: kept-channel plan + weights
                                                      (:func:`kdlib.prune.save_pruned`, re-applied on load)
quantize   PTQ or QAT (with KD), then int8 through    ``model_fp32.onnx`` + ``model_int8.onnx`` (ONNX Runtime) or
           ONNX Runtime or PT2E                       ``model_int8.pt2`` (a ``torch.export`` program, PT2E)
export     the final deployable ONNX file             ``model.onnx``
========== ========================================== ==============================================================

A fine-tune's teacher is ``"previous"`` (a frozen copy of the model before the stage: the dense student for
pruning, the float model for QAT), ``"teacher"`` (the recipe's teacher) or ``"none"`` (cross-entropy only).
Training stages checkpoint into their unfinished folder, so a killed stage resumes where it stopped.
"""

from __future__ import annotations

import copy
import importlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlib import data as kdata
from kdlib import models
from kdlib import quantize as Q
from kdlib.checkpoint import load_checkpoint, save_checkpoint, sidecar_path
from kdlib.methods import distill_with
from kdlib.pipeline.recipe import RecipeError
from kdlib.prune import fine_tune, load_pruned, prune_channels, save_pruned
from kdlib.train import fit

_MODEL_FORMAT = "kdlib.model/1"
#: Inputs used to check that a file computes what the model it came from computed.
PROBE_SIZE = 512


@dataclass
class Context:
    """What every stage needs: the checked recipe, the data and the models built from it.

    ``train`` has the training images minus the validation ones, and the validation images as its test split
    (what training monitors and sweeps choose on); ``test`` has the same training images and the real test
    split (read once, for the reported numbers).
    """

    recipe: dict[str, Any]
    device: torch.device
    train: kdata.Dataset
    test: kdata.Dataset
    log: Callable[[str], None] = field(default_factory=lambda: print)  # not a class attribute: autodoc would
    # document the built-in print as a member of Context
    teacher: nn.Module | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def example(self) -> torch.Tensor:
        """A batch of 64 training inputs: traces models for pruning and export."""
        return self.train.train.take(slice(0, 64))

    @property
    def probe(self) -> torch.Tensor:
        """Validation inputs for parity checks between a model and its exported file."""
        return self.train.test.take(slice(0, PROBE_SIZE))

    def seed(self) -> int:
        return self.recipe["run"]["seed"]


def build_model(spec: dict[str, Any], num_classes: int, seed: int) -> nn.Module:
    """A fresh model from a recipe's ``[teacher]``/``[student]`` table: a kdlib name or ``module:factory``."""
    name = spec["model"]
    if ":" not in name:
        return models.create(name, num_classes, seed=seed, **spec["kwargs"])
    module_name, _, factory_name = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as err:
        raise RecipeError(f"cannot import the model factory {name!r}: {err}. Give it as \"package.module:function\", "
                         "importable from the current folder or the installed packages") from None
    torch.manual_seed(seed)
    model = factory(**spec["kwargs"])
    if not isinstance(model, nn.Module):
        raise RecipeError(f"the model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights into ``model`` from a kdlib checkpoint (``state_dict``, or ``fit``'s ``model`` entry) or a
    plain ``torch.save(model.state_dict())`` file; always ``weights_only``, hash-checked when a sidecar exists."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = load_checkpoint(path, map_location="cpu", verify=sidecar_path(path).exists())
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    model.load_state_dict(state)
    return model


def save_model(path: Path, model: nn.Module) -> None:
    save_checkpoint(path, {"format": _MODEL_FORMAT, "state_dict": {k: v.detach().cpu() for k, v in
                                                                    model.state_dict().items()}})


def artifact(kind: str, folder: Path) -> Path:
    """The file holding the model of a finished stage (its size is the model's size on disk)."""
    names = {"teacher": "model.pt", "distill": "model.pt", "prune": "pruned.pt", "export": "model.onnx"}
    if kind == "quantize":
        onnx = folder / "model_int8.onnx"
        return onnx if onnx.is_file() else folder / "model_int8.pt2"
    if kind not in names:
        raise ValueError(f"stage {kind!r} saves no model")
    return folder / names[kind]


def load_stage_model(ctx: Context, kind: str, folder: Path) -> nn.Module:
    """The model a finished stage saved in ``folder`` (its :func:`artifact`), loaded without re-running the stage."""
    path = artifact(kind, folder)
    if path.suffix == ".onnx":
        return Q.OnnxModel(path)
    if path.suffix == ".pt2":
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        # An exported program refuses .eval() unless told that train/eval need not change its graph.
        return allow_exported_model_train_eval(torch.export.load(str(path)).module())
    fresh = build_model(ctx.recipe["teacher" if kind == "teacher" else "student"], ctx.train.num_classes, 0)
    if kind == "prune":
        return load_pruned(path, fresh.to(ctx.device), map_location=ctx.device)
    return load_weights(fresh, path).to(ctx.device)


def _fit_settings(ctx: Context, spec: dict[str, Any], work: Path, desc: str) -> dict[str, Any]:
    return dict(epochs=spec["epochs"], lr=spec["lr"], batch_size=spec["batch_size"], seed=ctx.seed(),
                device=ctx.device, desc=desc, checkpoint=work / "train_state.pt", resume=True)


def train_teacher(ctx: Context, work: Path) -> nn.Module:
    spec = ctx.recipe["teacher"]
    teacher = build_model(spec, ctx.train.num_classes, spec["seed"])
    fit(teacher, ctx.train, epochs=spec["epochs"], lr=spec["lr"], batch_size=spec["batch_size"], seed=spec["seed"],
        device=ctx.device, desc="teacher", checkpoint=work / "train_state.pt", resume=True)
    save_model(work / "model.pt", teacher)
    return teacher


def distill_stage(ctx: Context, spec: dict[str, Any], student: nn.Module, work: Path) -> nn.Module:
    teacher = ctx.teacher if ctx.teacher is not None else student
    settings = _fit_settings(ctx, spec, work, f"distill ({spec['method']})")
    distill_with(spec["method"], student, teacher, ctx.train, recipe=spec["recipe"], optimizer=spec["optimizer"],
                 weight_decay=spec["weight_decay"], **settings)
    save_model(work / "model.pt", student)
    return student


def _fine_tune(ctx: Context, spec: dict[str, Any], model: nn.Module, previous: nn.Module, work: Path,
               desc: str) -> None:
    if spec["epochs"] == 0:
        return
    teacher = {"previous": previous, "teacher": ctx.teacher, "none": None}[spec["teacher"]]
    kd = dict(temperature=spec["temperature"], alpha=spec["alpha"]) if teacher is not None else {}
    fine_tune(model, ctx.train, teacher, **kd, **_fit_settings(ctx, spec, work, desc))


def prune_stage(ctx: Context, spec: dict[str, Any], model: nn.Module, work: Path) -> nn.Module:
    labeled = (ctx.train.train.take(slice(0, 256)), ctx.train.train.y[:256]) if spec["importance"] == "taylor" else None
    result = prune_channels(model, ctx.example, spec["ratio"], spec["importance"], round_to=spec["round_to"],
                            data=labeled)
    _fine_tune(ctx, spec, result.model, copy.deepcopy(model), work, f"prune {spec['ratio']:.0%} + fine-tune")
    save_pruned(work / "pruned.pt", result, ctx.example)
    return result.model


def quantize_stage(ctx: Context, spec: dict[str, Any], model: nn.Module, work: Path) -> nn.Module:
    batches = spec["calibration_batches"]
    float_model = model
    if spec["mode"] == "qat":
        prepared = Q.calibrate(Q.prepare(model, Q.QuantConfig(8, 8)), ctx.train, batches=batches, batch_size=64)
        _fine_tune(ctx, spec, prepared, copy.deepcopy(model), work, "quantization-aware training")
        float_model = Q.strip(prepared).eval()
    float_model = float_model.to("cpu").eval()
    if spec["backend"] == "pt2e":
        graph = Q.quantize_pt2e(float_model, ctx.train, batches=batches, compile=False)
        example, shapes = Q.runtime.symbolic_batch(ctx.example.cpu())
        torch.export.save(torch.export.export(graph, (example,), dynamic_shapes=shapes), str(work / "model_int8.pt2"))
        return graph
    fp32 = Q.export_onnx(float_model, work / "model_fp32.onnx", ctx.example.cpu())
    Q.check_parity(float_model, Q.OnnxModel(fp32), ctx.probe.cpu(), preset="exact")
    int8 = Q.quantize_onnx(fp32, work / "model_int8.onnx", ctx.train, method=spec["calibration"], batches=batches)
    quantized = Q.OnnxModel(int8)
    # The logit error must be within the int8 tolerance; the top-1 agreement is not required, because a model
    # whose logits are nearly tied (pruned without a fine-tune, say) flips near-ties under any correct rounding,
    # while a broken conversion shows as a logit error far beyond the tolerance.
    Q.check_parity(float_model, quantized, ctx.probe.cpu(), preset="int8", min_agreement=0.0)
    return quantized


def export_stage(ctx: Context, spec: dict[str, Any], model: nn.Module, work: Path) -> nn.Module:
    target = work / "model.onnx"
    if isinstance(model, Q.OnnxModel):
        shutil.copyfile(model.path, target)
    else:
        reference = copy.deepcopy(model).to("cpu").eval()
        Q.export_onnx(reference, target, ctx.example.cpu())
        Q.check_parity(reference, Q.OnnxModel(target), ctx.probe.cpu(), preset="exact")
    return Q.OnnxModel(target)


#: The stages that produce a model, by kind.
RUNNERS: dict[str, Callable[[Context, dict[str, Any], nn.Module, Path], nn.Module]] = {
    "distill": distill_stage, "prune": prune_stage, "quantize": quantize_stage, "export": export_stage,
}
