"""The chapter-5 benchmark scripts run end to end (tiny settings) and write what the book reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_data import write_cifar100

REPO = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "KDLIB_PROGRESS": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_method_zoo_smoke(tmp_path):
    out = tmp_path / "zoo.json"
    run_script("benchmarks/method_zoo.py", "--smoke", "--seeds", "2", "--workers", "1", "--pairs", "mnist1d",
               "--methods", "student", "kd", "at", "crd", "--out", str(out))
    result = json.loads(out.read_text())
    rows = {(r["method"], r["seed"]): r for r in result["results"]}
    assert set(rows) == {(m, s) for m in ("student", "kd", "at", "crd") for s in (0, 1)}
    assert rows[("at", 0)]["status"] == "n/a"  # an MLP student has no feature maps
    assert all(0 <= rows[(m, s)]["final_accuracy"] <= 1 for m in ("student", "kd", "crd") for s in (0, 1))
    assert result["protocol"]["mnist1d"]["student"] == "mlp" and result["smoke"] is True


def test_cifar100_recipe_runs_teacher_then_student(tmp_path):
    write_cifar100(tmp_path / "cifar-100-python", n_train=8, n_test=4)
    common = ["--pair", "resnet56-resnet20", "--epochs", "1", "--device", "cpu", "--root", str(tmp_path),
              "--out", str(tmp_path / "results")]
    run_script("benchmarks/cifar100_recipe.py", "teacher", *common)
    run_script("benchmarks/cifar100_recipe.py", "student", "--method", "dkd", *common)
    record = json.loads((tmp_path / "results" / "resnet56-resnet20" / "dkd_seed0.json").read_text())
    assert record["method"] == "dkd" and record["config"]["optimizer"] == "sgd"
    assert record["overrides"] == {"beta": 2.0}  # mdistiller's DKD config for this pair
    assert record["config"]["batch_size"] == 64 and 0 <= record["final_accuracy"] <= 1
