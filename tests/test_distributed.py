"""DDP under torchrun on the CPU (gloo, 2 processes): disjoint shards, identical weights, the same run as one process
with a batch twice as large, rank-0-only files and resume. Each case launches tests/ddp_worker.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")
REPO = WORKER.parent.parent


def launch(out: Path, kind: str, batch: int, procs: int, stop_at: int | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    args = [str(out), kind, str(batch)] + ([str(stop_at)] if stop_at else [])
    if procs == 1:
        cmd = [sys.executable, str(WORKER), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", str(WORKER),
               *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDLIB_PROGRESS": "0", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    if (done.returncode != 0) != (stop_at is not None):  # a run stopped on purpose exits non-zero (torchrun: 1)
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.returncode


def load(out: Path, rank: int) -> dict:
    return torch.load(out / f"rank{rank}.pt", weights_only=False)


@pytest.fixture(scope="module")
def ddp_tensors_run(tmp_path_factory) -> Path:
    """One uninterrupted 2-rank run on kdlib tensors, shared by the equivalence and the resume tests."""
    out = tmp_path_factory.mktemp("ddp_tensors")
    launch(out, "tensors", batch=8, procs=2)
    return out


@pytest.mark.parametrize("kind", ["tensors", "loader"])
def test_two_ranks_equal_one_process_with_twice_the_batch(tmp_path, kind, request):
    ddp = request.getfixturevalue("ddp_tensors_run") if kind == "tensors" else tmp_path / "ddp"
    if kind == "loader":
        launch(ddp, kind, batch=8, procs=2)
    launch(tmp_path / "single", kind, batch=16, procs=1)
    r0, r1, single = load(ddp, 0), load(ddp, 1), load(tmp_path / "single", 0)
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), f"{name} differs between the ranks"
        torch.testing.assert_close(value, single["state"][name], rtol=1e-5, atol=1e-6)
    assert len(r0["seen"]) == len(r1["seen"]) == len(single["seen"]) == 3 * 96 // 16
    for a, b, both in zip(r0["seen"], r1["seen"], single["seen"]):
        assert not set(a) & set(b), "the ranks trained on overlapping samples"
        assert sorted(a + b) == sorted(both), "together the ranks did not see the one-process batch"
    # evaluation is sharded and summed: every rank reports the accuracy of the whole test split
    assert [r["test_accuracy"] for r in r0["history"]] == [r["test_accuracy"] for r in r1["history"]]
    for two, one in zip(r0["history"], single["history"]):
        assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=1e-9)
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    # one checkpoint, written by rank 0 only (the write is atomic: no temporary files are left behind)
    assert sorted(p.name for p in ddp.iterdir()) == ["ckpt.pt", "ckpt.pt.sha256", "rank0.pt", "rank1.pt"]


def test_resume_under_ddp_continues_the_interrupted_run(tmp_path, ddp_tensors_run):
    launch(tmp_path / "cut", "tensors", batch=8, procs=2, stop_at=8)  # dies after epoch 1's checkpoint (step 6)
    assert (tmp_path / "cut" / "ckpt.pt").exists() and not (tmp_path / "cut" / "rank0.pt").exists()
    launch(tmp_path / "cut", "tensors", batch=8, procs=2)
    whole, resumed = load(ddp_tensors_run, 0), load(tmp_path / "cut", 0)
    assert resumed["resumed_from"] == 6
    for name, value in whole["state"].items():
        assert torch.equal(value, resumed["state"][name]), f"{name} differs after resuming"
