"""Checkpoints: atomic writes, SHA-256 verification before unpickling, weights_only refusal, and bit-identical
resumption of fit / distill / Distiller runs interrupted at any step (by an exception and by a real SIGKILL)."""

from __future__ import annotations

import copy

import dataclasses
import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kdlib.checkpoint as ckpt
from kdlib.checkpoint import (
    CheckpointError,
    CheckpointIntegrityError,
    UnsafeCheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    sidecar_path,
)
from kdlib.data import RandomShift
from kdlib.distill import distill
from kdlib.distiller import CRDTerm, Distiller, FeatureTerm, LogitTerm, Term
from kdlib.losses import fitnet_loss, kd_loss
from kdlib.train import ResumeMismatchError, fit
from tiny import blobs, mlp

TESTS = Path(__file__).resolve().parent


def _state(value: float = 1.0) -> dict:
    return {"w": torch.full((3, 4), value), "step": 7, "history": [{"loss": 0.5}], "name": "run"}


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ----------------------------------------------------------------------------------------- save and load


def test_save_records_the_sha256_in_a_sidecar_and_load_round_trips(tmp_path):
    path = tmp_path / "run" / "last.pt"  # the directory is created
    digest = save_checkpoint(path, _state())
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar_path(path).read_text() == f"{digest}  last.pt\n"  # sha256sum -c format
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], _state()["w"]) and loaded["step"] == 7 and loaded["history"] == [{"loss": 0.5}]
    assert load_checkpoint(path, expected_sha256=digest.upper())["name"] == "run"
    assert _files(path.parent) == ["last.pt", "last.pt.sha256"]  # no temporary files left


def test_a_crash_in_torch_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    first = save_checkpoint(path, _state(1.0))

    def crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip archive")  # a partial write, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _state(2.0))
    monkeypatch.undo()
    assert _files(tmp_path) == ["last.pt", "last.pt.sha256"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first
    assert torch.equal(load_checkpoint(path)["w"], torch.full((3, 4), 1.0))


def test_a_failed_rename_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1.0))

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(2.0))
    monkeypatch.undo()
    assert _files(tmp_path) == ["last.pt", "last.pt.sha256"]
    assert torch.equal(load_checkpoint(path)["w"], torch.full((3, 4), 1.0))


@pytest.mark.parametrize("damage", ["truncate", "flip one byte"])
def test_a_damaged_file_is_refused_before_anything_is_unpickled(tmp_path, monkeypatch, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state())
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load must not run on a file that failed its hash check")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(CheckpointIntegrityError, match="modified or truncated.*did not unpickle.*previous checkpoint"):
        load_checkpoint(path)


class _Payload:
    """Loading a pickle of this with full unpickling would run __setstate__ (i.e. code)."""

    ran = False

    def __setstate__(self, state):
        _Payload.ran = True


def test_a_pickle_of_an_arbitrary_object_is_refused_even_with_a_valid_sidecar(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.ones(2), "payload": _Payload()}, path)
    sidecar_path(path).write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  evil.pt\n")
    with pytest.raises(UnsafeCheckpointError, match="arbitrary code.*will not load|will not load.*arbitrary code"):
        load_checkpoint(path)
    assert not _Payload.ran
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        load_checkpoint(path, verify=False)


def test_missing_file_missing_sidecar_and_wrong_expected_digest(tmp_path):
    path = tmp_path / "last.pt"
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(path)
    digest = save_checkpoint(path, _state())
    sidecar_path(path).unlink()
    with pytest.raises(FileNotFoundError, match=r"no sidecar last.pt.sha256.*expected_sha256=.*verify=False"):
        load_checkpoint(path)
    assert load_checkpoint(path, expected_sha256=digest)["step"] == 7
    assert load_checkpoint(path, verify=False)["step"] == 7
    with pytest.raises(CheckpointIntegrityError, match="expected_sha256 records"):
        load_checkpoint(path, expected_sha256="0" * 64)
    with pytest.raises(ValueError, match="expected_sha256 must be 64 hex digits"):
        load_checkpoint(path, expected_sha256="abc")
    sidecar_path(path).write_text("garbage\n")
    with pytest.raises(CheckpointIntegrityError, match="does not hold a SHA-256"):
        load_checkpoint(path)


def test_bad_states_and_paths(tmp_path):
    with pytest.raises(TypeError, match="must be a dict"):
        save_checkpoint(tmp_path / "x.pt", [torch.ones(1)])
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save_checkpoint(tmp_path, _state())
    not_a_dict = tmp_path / "list.pt"
    torch.save([1, 2], not_a_dict)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(not_a_dict, verify=False)


def test_values_weights_only_would_refuse_are_rejected_at_save_time(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1.0))
    bad = {"optimizer": {"param_groups": [{"lr": np.float64(0.1)}]}}  # np.float64 subclasses float
    with pytest.raises(TypeError, match=r"state\['optimizer'\]\['param_groups'\]\[0\]\['lr'\]: it is a numpy.float64"):
        save_checkpoint(path, bad)
    with pytest.raises(TypeError, match="is a test_checkpoint._Payload|is a .*_Payload"):
        save_checkpoint(path, {"payload": _Payload()})
    assert torch.equal(load_checkpoint(path)["w"], torch.full((3, 4), 1.0))  # nothing was written
    assert _files(tmp_path) == ["last.pt", "last.pt.sha256"]
    ckpt.check_weights_only({"a": [torch.ones(1), nn.Parameter(torch.ones(1)), (1, 2.0, "x", None, True)],
                             "b": {torch.float16: torch.Size([2])}, "c": torch.device("cpu")})


def test_numpy_settings_still_give_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    fit(mlp(), blobs(), epochs=1, batch_size=np.int64(16), lr=np.float64(1e-3), checkpoint=path)
    result = fit(mlp(), blobs(), epochs=1, batch_size=16, lr=1e-3, checkpoint=path, resume=True)
    assert result.resumed_from == 6


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})

    def draw():
        return random.random(), random.gauss(0, 1), float(np.random.standard_normal()), torch.rand(3).tolist()

    expected = draw()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert draw() == expected
    with pytest.raises(ValueError, match=r"lacks \['numpy', 'python'\]"):
        restore_rng_state({"torch": torch.get_rng_state(), "cuda": []})


# ----------------------------------------------------------------------------------------- resuming fit


class Stop(Exception):
    """Stands for a crash in the middle of training."""


class Interrupt:
    """A loss term of weight 0 that raises (or SIGKILLs the process) on its ``at``-th call, else adds 0."""

    name = "stop"
    weight = 0.0

    def __init__(self, at: int | None = None, kill: bool = False) -> None:
        self.at, self.kill, self.calls = at, kill, 0

    def __repr__(self) -> str:
        return "Interrupt()"

    def __call__(self, batch, logits):
        self.calls += 1
        if self.calls == self.at:
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise Stop(f"interrupted at step {self.calls}")
        return logits.new_zeros(())


class InterruptTerm(Term):
    """:class:`Interrupt` as a Distiller term."""

    def __init__(self, at: int | None = None) -> None:
        super().__init__(weight=0.0, name="stop")
        self.stateful = True  # counts its calls: the Distiller's dry run before training must not call it
        self.at, self.calls = at, 0

    def compute(self, out):
        self.calls += 1
        if self.calls == self.at:
            raise Stop(f"interrupted at step {self.calls}")
        return out.student_logits.new_zeros(())


def dropout_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))


def augmented_blobs():
    return dataclasses.replace(blobs(), augment=RandomShift(2))


def _teacher() -> nn.Module:
    model = mlp(hidden=32, seed=1)
    fit(model, blobs(), epochs=4, batch_size=16, lr=1e-2, seed=0)
    return model


def run_setup(name: str, *, at: int | None = None, kill: bool = False, **kw):
    """One training run of a named setup; returns ``(modules whose state must match, FitResult)``.

    Every setup has 18 steps (96 samples, batch 16: 6 per epoch, 3 epochs).
    """
    if name == "dropout+augment":  # global RNG (dropout) and the batch generator (order and shifts)
        model = dropout_mlp()
        result = fit(model, augmented_blobs(), epochs=3, batch_size=16, seed=2, eval_every=4,
                     loss_terms=[Interrupt(at, kill)], **kw)
        return [model], result
    if name == "sgd+smoothing+clip":
        model = mlp(seed=5)
        result = fit(model, blobs(), epochs=3, batch_size=16, seed=3, optimizer="sgd", lr=0.05,
                     schedule="multistep", milestones=(1, 2), label_smoothing=0.1, grad_clip=0.5,
                     loss_terms=[Interrupt(at, kill)], **kw)
        return [model], result
    if name == "distill cached":
        student = mlp(seed=2)
        result = distill(student, _teacher(), blobs(), epochs=3, batch_size=16, seed=4, temperature=3.0,
                         extra_terms=[Interrupt(at, kill)], **kw)
        assert result.config["cached_teacher"] is True
        return [student], result
    if name == "distiller fitnet adapter":
        student = mlp(seed=3)
        hint = FeatureTerm("0", "0", fitnet_loss, weight=1.0)  # 16 -> 32 features: a trained Linear adapter
        terms = [LogitTerm(kd_loss, weight=0.8, temperature=4.0), hint, InterruptTerm(at)]
        result = Distiller(student, _teacher(), terms, ce_weight=0.2).fit(blobs(), epochs=3, batch_size=16, seed=5, **kw)
        assert isinstance(hint.adapter, nn.Sequential)
        return [student, hint], result
    if name == "distiller crd memory":  # a memory bank updated every step, negatives from the global RNG
        student = mlp(seed=3)
        crd = CRDTerm("2:input", "2:input", weight=0.5, embed_dim=8, num_negatives=16)
        terms = [crd, InterruptTerm(at)]
        result = Distiller(student, _teacher(), terms, ce_weight=1.0).fit(blobs(), epochs=3, batch_size=16, seed=6, **kw)
        return [student, crd], result
    raise KeyError(name)


SETUPS = ["dropout+augment", "sgd+smoothing+clip", "distill cached", "distiller fitnet adapter", "distiller crd memory"]
_REFERENCE: dict[str, tuple] = {}


def reference(name: str):
    """The uninterrupted run of a setup (computed once per session)."""
    if name not in _REFERENCE:
        modules, result = run_setup(name)
        _REFERENCE[name] = ([{k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in m.state_dict().items()}
                             for m in modules], result)
    return _REFERENCE[name]


def timeless(history):
    return [{k: v for k, v in record.items() if k != "train_seconds"} for record in history]


def assert_same_run(name: str, modules, result) -> None:
    states, expected = reference(name)
    assert len(states) == len(modules)
    for state, module in zip(states, modules):
        now = module.state_dict()
        assert state.keys() == now.keys()
        for key, value in state.items():
            same = torch.equal(value, now[key]) if torch.is_tensor(value) else value == now[key]
            assert same, f"{name}: {key} differs"
    assert timeless(result.history) == timeless(expected.history)
    for attr in ("best_accuracy", "best_epoch", "final_accuracy", "steps", "config", "skipped_steps"):
        assert getattr(result, attr) == getattr(expected, attr), attr


@pytest.mark.parametrize("name", SETUPS)
@pytest.mark.parametrize("stop_at", [3, 5, 8, 11, 18])
def test_a_run_interrupted_at_any_step_resumes_bit_identically(tmp_path, name, stop_at):
    # checkpoints after steps 4, 8, 12, 16 and 18. stop_at=3: before the first one (resume starts afresh);
    # 5: right after one; 8: right before one; 11: mid-epoch and mid-interval; 18: the very last step.
    path = tmp_path / "run.pt"
    with pytest.raises(Stop):
        run_setup(name, at=stop_at, checkpoint=path, checkpoint_every=4)
    assert path.exists() == (stop_at > 4)
    modules, result = run_setup(name, checkpoint=path, checkpoint_every=4, resume=True)
    assert result.resumed_from == {3: 0, 5: 4, 8: 4, 11: 8, 18: 16}[stop_at]
    assert_same_run(name, modules, result)


def test_resuming_a_finished_run_returns_its_result_without_training(tmp_path):
    path = tmp_path / "run.pt"
    modules, first = run_setup("dropout+augment", checkpoint=path)  # default: a checkpoint per epoch, and at the end
    assert_same_run("dropout+augment", modules, first)
    before = path.read_bytes()
    modules, again = run_setup("dropout+augment", checkpoint=path, resume=True)
    assert again.resumed_from == 18 and again.train_seconds == first.train_seconds
    assert_same_run("dropout+augment", modules, again)
    assert path.read_bytes() == before  # nothing was trained, nothing saved


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_a_process_killed_by_sigkill_resumes_bit_identically(tmp_path):
    path = tmp_path / "run.pt"
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(TESTS)!r}]
        import torch
        torch.set_num_threads(1)
        from test_checkpoint import run_setup
        run_setup("dropout+augment", at=11, kill=True, checkpoint={str(path)!r}, checkpoint_every=4)
        print("not killed")
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDLIB_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert "not killed" not in proc.stdout
    assert _files(tmp_path) == ["run.pt", "run.pt.sha256"]  # killed between saves: no temporary files
    assert load_checkpoint(path)["step"] == 8
    modules, result = run_setup("dropout+augment", checkpoint=path, checkpoint_every=4, resume=True)
    assert result.resumed_from == 8
    assert_same_run("dropout+augment", modules, result)


def test_resume_without_a_checkpoint_file_is_a_fresh_run(tmp_path):
    path = tmp_path / "none" / "run.pt"
    modules, result = run_setup("sgd+smoothing+clip", checkpoint=path, resume=True)
    assert result.resumed_from == 0 and path.exists()
    assert_same_run("sgd+smoothing+clip", modules, result)


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    path = tmp_path / "run.pt"
    data = blobs()
    fit(mlp(), data, epochs=1, batch_size=16, checkpoint=path)
    with pytest.raises(ResumeMismatchError, match=r"1 setting\(s\) differ: batch_size: 16 in the checkpoint, 32 in this call"):
        fit(mlp(), data, epochs=1, batch_size=32, checkpoint=path, resume=True)
    with pytest.raises(ResumeMismatchError, match="lr: 0.001 in the checkpoint, 0.01 in this call.*seed: 0 .* 1 in"):
        fit(mlp(), data, epochs=1, batch_size=16, lr=1e-2, seed=1, checkpoint=path, resume=True)
    with pytest.raises(ResumeMismatchError, match="model: 'Sequential with 195 parameters' in the checkpoint, "
                                                  "'Sequential with 387 parameters'"):
        fit(mlp(hidden=32), data, epochs=1, batch_size=16, checkpoint=path, resume=True)
    with pytest.raises(ResumeMismatchError, match="data_contents"):
        fit(mlp(), blobs(seed=1), epochs=1, batch_size=16, checkpoint=path, resume=True)
    with pytest.raises(ResumeMismatchError, match="loss_terms: \\[\\] in the checkpoint, \\['stop"):
        fit(mlp(), data, epochs=1, batch_size=16, loss_terms=[Interrupt()], checkpoint=path, resume=True)
    fit(mlp(), data, epochs=1, batch_size=32, checkpoint=path)  # resume=False overwrites it
    assert load_checkpoint(path)["fingerprint"]["batch_size"] == 32
    save_checkpoint(path, {"weights": torch.ones(1)})
    with pytest.raises(CheckpointError, match="not a checkpoint of kdlib.train.fit"):
        fit(mlp(), data, epochs=1, checkpoint=path, resume=True)


def test_resume_refuses_a_corrupted_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    fit(mlp(), blobs(), epochs=1, batch_size=16, checkpoint=path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointIntegrityError, match="modified or truncated"):
        fit(mlp(), blobs(), epochs=1, batch_size=16, checkpoint=path, resume=True)


def test_the_checkpoint_holds_everything_as_tensors_and_plain_values(tmp_path):
    path = tmp_path / "run.pt"
    run_setup("distiller fitnet adapter", checkpoint=path, checkpoint_every=5)
    state = load_checkpoint(path)  # weights_only=True: it would refuse anything else
    assert state["step"] == 18 and state["format"] == "kdlib.fit/2"
    assert {"model", "optimizer", "scheduler", "scaler", "terms", "stream", "rng", "running", "history",
            "train_seconds", "skipped_steps", "consecutive_rollbacks", "fingerprint"} <= set(state)
    assert len(state["terms"]) == 3 and any(k.startswith("adapter.") for k in state["terms"][1])
    assert state["stream"]["order"].shape == (96,) and state["stream"]["pos"] == 96
    assert state["rng"]["torch"].dtype == torch.uint8 and len(state["rng"]["python"]["state"]) == 625


def test_a_distiller_term_with_warmup_resumes_bit_identically(tmp_path):
    def run(at=None, **kw):
        student = mlp(seed=3)
        terms = [LogitTerm(kd_loss, weight=0.8, warmup=0.5), InterruptTerm(at)]
        Distiller(student, _teacher(), terms, ce_weight=0.2).fit(blobs(), epochs=3, batch_size=16, seed=5, **kw)
        return student.state_dict()

    expected = run()
    with pytest.raises(Stop):
        run(at=11, checkpoint=tmp_path / "run.pt", checkpoint_every=4)
    resumed = run(checkpoint=tmp_path / "run.pt", checkpoint_every=4, resume=True)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
