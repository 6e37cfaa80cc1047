"""The chapter-5 benchmark scripts run end to end (tiny settings) and write what the book reads."""

from __future__ import annotations

import json
import os
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
    run_script("benchmarks/method_zoo.py", "--smoke", "--seeds", "1", "--workers", "1",
               "--methods", "student", "kd", "dkd", "crd", "--out", str(out))
    result = json.loads(out.read_text())
    runs = {(r["stage"], r["method"], r["teacher"], r["steps"]): r for r in result["results"]}
    stages = [r["stage"] for r in result["results"]]
    assert stages.count("tune") == 18 and stages.count("tune2") == 9  # 9 configurations for alone and KD, 3 for others
    steps = result["protocol"]["tune_steps"], result["protocol"]["steps"]
    assert {(m, b) for s, m, t, b in runs if s == "test" and t == "trained"} == {
        ("student", steps[0]), ("student", steps[1]), ("kd", steps[0]), ("kd", steps[1]), ("dkd", steps[0]),
        ("dkd", steps[1]), ("crd", steps[0])}  # CRD is short only
    assert ("test", "kd", "random", steps[1]) in runs and ("test", "crd", "random", steps[0]) in runs
    assert all(0 <= r["final_accuracy"] <= 1 for r in result["results"] if r["status"] == "ok")
    assert result["tuned"]["dkd"] in [{"lr": result["tuned"]["kd"]["lr"], **c} for c in result["protocol"]["grids"]["dkd"]]
    assert result["smoke"] is True and not out.with_suffix(".partial.jsonl").exists()


def test_kd_protocol_smoke(tmp_path):
    out = tmp_path / "kd_protocol.json"
    run_script("benchmarks/kd_protocol.py", "--smoke", "--seeds", "1", "--patience-seeds", "1", "--workers", "1",
               "--out", str(out))
    result = json.loads(out.read_text())
    stages = {}
    for r in result["results"]:
        stages.setdefault(r["stage"], []).append(r)
    assert len(stages["tune"]) == 27 and set(result["tuned"]) == {"alone", "kd", "fm"}
    arms = {(r["arm"], r["teacher_seed"]) for r in stages["arms"]}
    assert {a for a, _ in arms} == set(result["protocol"]["arms"])
    assert ("KD", 1) in arms and ("function matching", 1) in arms and ("alone", 1) not in arms
    assert {r["steps"] for r in stages["patience"]} == {30, 60}
    kd = next(r for r in stages["arms"] if r["arm"] == "KD" and r["teacher_seed"] == 0)
    assert 0 <= kd["fidelity/test_agreement"] <= 1 and kd["fidelity/test_kl"] >= 0 and kd["history"]
    assert kd["settings"] == result["tuned"]["kd"] and result["smoke"] is True


def test_kd_fashion_smoke(tmp_path):
    out = tmp_path / "kd_fashion.json"
    run_script("benchmarks/kd_fashion.py", "--smoke", "--seeds", "1", "--workers", "1", "--out", str(out))
    result = json.loads(out.read_text())
    runs = {(r["stage"], r["arm"], r["width"]) for r in result["results"]}
    assert {("test", a, w) for a in ("alone", "KD") for w in (30, 300)} <= runs
    assert {("few labels", "alone", 300), ("few labels", "KD", 300)} <= runs
    assert sum(r["stage"] == "tune" for r in result["results"]) == 16
    assert 0 <= result["teacher"]["accuracy"] <= 1 and result["smoke"] is True


def test_prune_controls_smoke(tmp_path):
    out = tmp_path / "prune_controls.json"
    run_script("benchmarks/prune_controls.py", "--smoke", "--seeds", "1", "--workers", "1", "--out", str(out))
    result = json.loads(out.read_text())
    arms = {(r["arm"], r["ratio"]) for r in result["results"]}
    assert arms == {("dense + extra epochs", 0.0), ("scratch", 0.3), ("scratch", 0.4), ("scratch", 0.5)}
    scratch = [r for r in result["results"] if r["arm"] == "scratch"]
    assert all(r["params"] < 297450 for r in scratch)  # the pruned widths, smaller than the dense "cnn"


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


def test_seed_variance_smoke(tmp_path):
    out = tmp_path / "seed_variance.json"
    run_script("benchmarks/seed_variance.py", "--smoke", "--seeds", "2", "--fashion-seeds", "2", "--workers", "1",
               "--out", str(out))
    result = json.loads(out.read_text())
    runs = {(r["pair"], r["arm"], r["seed"]): r for r in result["results"]}
    arms = {"mnist1d": ("init", "order", "alone", "kd", "kd_transfer"), "fashion": ("alone", "kd")}
    assert set(runs) == {(p, a, s) for p, names in arms.items() for a in names for s in (0, 1)}
    assert (runs[("mnist1d", "init", 1)]["init_seed"], runs[("mnist1d", "init", 1)]["order_seed"]) == (1, 0)
    assert (runs[("mnist1d", "order", 1)]["init_seed"], runs[("mnist1d", "order", 1)]["order_seed"]) == (0, 1)
    # The (init 0, order 0) run is repeated in three arms and must reproduce exactly.
    assert runs[("mnist1d", "init", 0)]["predictions"] == runs[("mnist1d", "alone", 0)]["predictions"]
    for (pair, _, _), r in runs.items():
        labels = result["protocol"][pair]["test_labels"]
        assert len(r["predictions"]) == len(labels) == len(result["protocol"][pair]["teacher_predictions"])
        assert abs(r["accuracy"] - sum(p == y for p, y in zip(r["predictions"], labels)) / len(labels)) < 1e-6
    assert result["smoke"] is True and result["machine"]["threads_per_run"] == 1
    assert not out.with_suffix(".partial.jsonl").exists()


def test_schemes_smoke(tmp_path):
    out = tmp_path / "schemes.json"
    run_script("benchmarks/schemes.py", "--smoke", "--seeds", "1", "--workers", "1", "--groups", "self", "multi",
               "capacity", "--out", str(out))
    result = json.loads(out.read_text())
    arms = {r["arm"] for r in result["results"]}
    assert {"alone", "born-again 2", "born-again ensemble", "Tf-KD reg", "defective teacher"} <= arms
    assert {"single 0", "ensemble confidence", "2 good + 1 weak, mean"} <= arms
    assert {"teacher 8 channels", "teacher 128 channels", "early-stopped widest", "TAKD"} <= arms
    assert all(0 <= r["accuracy"] <= 1 for r in result["results"]) and result["smoke"] is True
    assert {s["name"] for s in result["shared"]} >= {"teacher0", "teacher1", "teacher2", "weak", "early", "width128"}


def test_prune_curves_smoke(tmp_path):
    out = tmp_path / "prune_curves.json"
    run_script("benchmarks/prune_curves.py", "--smoke", "--seeds", "2", "--han-seeds", "1", "--curve-seeds", "1",
               "--workers", "1", "--out", str(out))
    result = json.loads(out.read_text())
    runs = {(r["task"], r["seed"]): r for r in result["results"]}
    assert set(runs) == {("lottery", 0), ("lottery", 1), ("han", 0), ("curves", 0)}
    for seed in (0, 1):  # the ticket and both controls end at the same overall sparsity
        lot = runs[("lottery", seed)]
        assert abs(lot["sparsity"] - 0.9) < 1e-6 and abs(lot["random_sparsity"] - lot["sparsity"]) < 1e-3
        assert abs(lot["reinit_sparsity"] - lot["sparsity"]) < 1e-6 and lot["rounds"][0]["sparsity"] == 0
    assert abs(runs[("han", 0)]["sparsity"] - 0.92) < 1e-6
    arms = {p["arm"] for p in runs[("curves", 0)]["points"]}
    assert arms == {"global one-shot", "layerwise one-shot", "global iterative", "global one-shot KD",
                    "global, no fine-tune"}
    assert all(0 <= p["accuracy"] <= 1 for p in runs[("curves", 0)]["points"])
    assert result["smoke"] is True and result["machine"]["threads_per_run"] == 1
    assert not out.with_suffix(".partial.jsonl").exists()


def test_prune_speedup_smoke(tmp_path):
    out = tmp_path / "prune_speedup.json"
    run_script("benchmarks/prune_speedup.py", "--smoke", "--seeds", "1", "--no-ce", "--ratios", "0.5",
               "--threads", "1", "--batches", "64", "1", "--train-threads", "1", "--out", str(out))
    result = json.loads(out.read_text())
    (row,) = result["pruning"]
    assert row["ratio"] == 0.5 and 0.2 < row["flops_ratio"] < 0.3 and len(row["kd"]) == 1 and "ce_mean" not in row
    assert result["masked"]["flops"] == result["dense"]["flops"]  # masks keep dense shapes
    variants = {(r["variant"], r["batch_size"]) for r in result["latency"]}
    names = ("dense", "masked", "pruned_0.5", "pruned_0.5_unrounded")  # round_to=8 by default, plus one without
    assert variants == {(v, b) for v in names for b in (64, 1)}
    assert all(r["threads"] == 1 and r["median_ms"] > 0 for r in result["latency"])
    assert result["smoke"] is True and result["targets"][0]["speedup_target"] == 1.6
    assert result["protocol"]["round_to"] == row["round_to"] == 8
    assert all(c % 8 == 0 for name, c in row["channels_after"].items() if name != "fc")
    assert 0 <= row["accuracy_pruned"] <= 1 and 0 <= row["accuracy_recalibrated"] <= 1
    assert len(row["kd"][0]["curve"]) >= 1 and row["kd"][0]["curve"][-1] == row["kd"][0]["accuracy"]


def test_quantize_int8_smoke(tmp_path):
    out = tmp_path / "quantize_int8.json"
    run_script("benchmarks/quantize_int8.py", "--smoke", "--threads", "1", "--batches", "64", "--out", str(out))
    result = json.loads(out.read_text())
    post = result["post_training"]
    assert post["fp32"]["onnx_parity"]["max_abs_diff"] < 1e-3  # the fp32 export computes the same function
    for method in ("minmax", "entropy", "percentile"):
        assert post[f"onnx_int8_{method}"]["onnx_bytes"] < post["fp32"]["onnx_bytes"] / 3
    assert 0 <= post["pt2e_int8"]["agreement_with_reference"] <= 1
    variants = {r["variant"] for r in result["latency"]}
    assert variants == {"torch_fp32", "torch_fp32_compiled", "pt2e_int8", "onnx_fp32", "onnx_int8"}
    assert all(r["threads"] == 1 and r["batch_size"] == 64 and r["median_ms"] > 0 for r in result["latency"])
    qat = result["qat"]
    for config in ("w8a8", "w4a8", "w4a4"):
        assert len(qat[config]["qat_kd"]["values"]) == len(qat[config]["qat_ce"]["values"]) == 1
        assert qat[config]["packed_bytes"] < post["fp32"]["state_dict_bytes"]
    assert qat["w4a8"]["packed_bytes"] < qat["w8a8"]["packed_bytes"]
    targets = result["targets"]
    assert targets["met"]["size"] == (targets["size_ratio"] >= 3.5 and targets["size_ratio_onnx"] >= 3.5)
    assert targets["met"]["speed"] == (targets["speedup_batch64"] >= 2.0) and result["smoke"] is True


def test_distill_throughput_smoke(tmp_path):
    out = tmp_path / "throughput.json"
    run_script("benchmarks/distill_throughput.py", "--smoke", "--out", str(out))
    result = json.loads(out.read_text())
    assert set(result["pairs"]) == {"mnist1d", "fashion"} and result["smoke"] is True
    for pair in result["pairs"].values():
        rows = pair["methods"]
        assert rows["student"]["status"] == "ok" and rows["student"]["time_ratio"] == 1.0
        assert all(row["status"] == "n/a" or row["samples_per_second"] > 0 for row in rows.values())


def test_train_speed_smoke(tmp_path):
    out = tmp_path / "train_speed.json"
    run_script("benchmarks/train_speed.py", "--smoke", "--fit-kw", "no_such_option=True", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["settings"]["smoke"] is True and result["settings"]["train_samples"] == 512
    assert result["machine"]["threads"] == 1 and result["machine"]["torch"]
    assert "no_such_option" in result["fit_kw_rejected"] and result["settings"]["fit_kw"] == {}
    for section, ref in (("cpu_fit", "minimal"), ("cpu_distill", "hand_kd")):
        sec = result[section]
        assert sec["steps_per_epoch"] == 4 and ref in sec["seconds"] and len(sec["seconds"]) == 2
        assert sec["ratio_train_seconds"]["median"] > 0 and sec["ratio_wall_minus_eval"]["median"] > 0
    assert result["cpu_fit"]["seconds"]["kdlib"]["eval"] > 0  # evaluation was timed and taken out
    assert isinstance(result["cpu_fit"]["goal_met"], bool)
    gpu = result["gpu"]
    assert gpu["ran"] is False or {"vs_peer", "bf16"} <= set(gpu)


def test_cifar100_recipe_runs_under_torchrun(tmp_path):
    # Two CPU processes (gloo): the global batch of 64 is split into 32 per rank, rank 0 alone writes the results.
    write_cifar100(tmp_path / "cifar-100-python", n_train=8, n_test=4)
    out = tmp_path / "results"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "benchmarks" / "cifar100_recipe.py"), "teacher", "--pair", "resnet56-resnet20",
               "--epochs", "1", "--root", str(tmp_path), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDLIB_PROGRESS": "0", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "resnet56-resnet20" / "resnet56_seed0.json").read_text())
    assert record["config"]["world_size"] == 2 and record["config"]["batch_size"] == 32
    assert sorted(p.name for p in (out / "resnet56-resnet20").iterdir()) == ["resnet56_seed0.json", "resnet56_seed0.pt"]
