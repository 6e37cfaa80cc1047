import random

import numpy as np
import pytest
import torch

from kdlib.repro import paired_difference, seed_everything, set_deterministic, summarize


def test_seed_everything_seeds_all_generators():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    g1 = seed_everything(7)
    a = draw()
    g2 = seed_everything(7)
    assert draw() == a
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
    seed_everything(8)
    assert draw() != a


def test_seed_validation():
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            seed_everything(bad)


def test_deterministic_switch():
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_summarize_mean_std_and_interval():
    out = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert out["mean"] == 3.0 and out["n"] == 5
    assert out["std"] == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1))
    assert out["ci95"] == pytest.approx(2.776445 * out["std"] / np.sqrt(5), rel=1e-5)
    single = summarize([0.5])
    assert single["mean"] == 0.5 and np.isnan(single["std"])
    with pytest.raises(ValueError, match="non-empty"):
        summarize([])


def test_paired_difference_verdicts_follow_the_interval():
    base = [60.0, 61.0, 59.5, 60.5, 60.0]
    better = paired_difference([b + 2 + 0.1 * i for i, b in enumerate(base)], base)
    assert better["verdict"] == "better" and better["low"] > 0 and better["diff"] == pytest.approx(2.2)
    worse = paired_difference([b - 1 for b in base], base)
    assert worse["diff"] == pytest.approx(-1) and worse["verdict"] == "worse"  # zero spread: interval is a point
    noise = paired_difference([60.0, 62.0, 58.0, 61.0, 59.0], base)
    assert noise["low"] < 0 < noise["high"] and noise["verdict"] == "n.s."
    # Pairing matters: a constant offset is significant even when the seeds themselves vary a lot.
    wide = [50.0, 70.0, 55.0, 65.0, 60.0]
    assert paired_difference([w + 0.5 for w in wide], wide)["verdict"] == "better"


def test_paired_difference_needs_the_same_seeds():
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])


# ------------------------------------------------------------------------ run records, seeds, bit-identity


def test_run_record_holds_versions_machine_settings_and_headline_numbers(tmp_path):
    import json
    import platform

    import kdlib
    from kdlib.profile import cpu_name
    from kdlib.repro import run_record, save_run_record
    from kdlib.train import fit
    from tiny import blobs, mlp

    result = fit(mlp(), blobs(), epochs=1, batch_size=16, seed=3)
    record = run_record(result, config={"model": "mlp"}, metrics={"agreement": 0.9}, label="unit test")
    assert record["python"] == platform.python_version() and record["torch"] == torch.__version__
    assert record["numpy"] == np.__version__ and record["kdlib"] == kdlib.__version__
    assert record["cpu"] == cpu_name() and record["torch_threads"] == torch.get_num_threads()
    assert record["device"] == "cpu" and record["seed"] == 3 and record["label"] == "unit test"
    assert record["config"]["batch_size"] == 16 and record["config"]["model"] == "mlp"
    assert record["metrics"]["final_accuracy"] == result.final_accuracy and record["metrics"]["agreement"] == 0.9
    assert record["timestamp"].endswith("+00:00")
    assert record["git"] is None or len(record["git"]["commit"]) == 40

    path = save_run_record(tmp_path / "results" / "run.json", record)
    loaded = json.loads(path.read_text())
    assert loaded["metrics"] == record["metrics"] and loaded["config"]["terms"] == []  # tuples became lists
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.json"]  # written atomically, no temp file left
    with pytest.raises(TypeError, match="record must be a dict"):
        save_run_record(tmp_path / "x.json", [1])


def test_run_record_without_git_or_result(monkeypatch):
    import subprocess

    from kdlib import repro

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    record = repro.run_record(seed=1, device="cpu")
    assert record["git"] is None and record["seed"] == 1 and record["metrics"] == {} and record["config"] == {}


def test_run_seeds_collects_a_tidy_frame_and_its_summary():
    from kdlib.repro import run_seeds, seed_summary

    frame = run_seeds(lambda s: {"acc": 0.5 + 0.1 * s, "loss": 1.0 - 0.1 * s}, [0, 1, 2, 3])
    assert list(frame.columns) == ["seed", "acc", "loss"] and list(frame["seed"]) == [0, 1, 2, 3]
    assert frame.attrs["summary"]["acc"] == summarize([0.5, 0.6, 0.7, 0.8])
    table = seed_summary(frame)
    assert list(table.index) == ["acc", "loss"] and list(table.columns) == ["mean", "std", "n", "ci95"]
    assert table.loc["loss", "mean"] == pytest.approx(0.85) and table.loc["loss", "n"] == 4

    numbers = run_seeds(lambda s: float(s), [1, 2, 3], metric="accuracy")
    assert list(numbers.columns) == ["seed", "accuracy"] and numbers.attrs["summary"]["accuracy"]["mean"] == 2.0
    assert list(run_seeds(lambda s: s * 2, [4]).columns) == ["seed", "value"]
    only = run_seeds(lambda s: {"acc": 1.0, "loss": 2.0}, [0, 1], metric="loss")
    assert list(only.columns) == ["seed", "loss"]

    with pytest.raises(ValueError, match="seeds must be distinct"):
        run_seeds(float, [1, 1])
    with pytest.raises(ValueError, match="need at least one seed"):
        run_seeds(float, [])
    with pytest.raises(ValueError, match="seeds must be non-negative ints"):
        run_seeds(float, [0, -1])
    with pytest.raises(TypeError, match="must return a number, a dict of numbers or a FitResult"):
        run_seeds(lambda s: "high", [0])
    with pytest.raises(KeyError, match="metric 'top5' is not among"):
        run_seeds(lambda s: {"acc": 1.0}, [0], metric="top5")
    with pytest.raises(ValueError, match="returned metrics"):
        run_seeds(lambda s: {"acc": 1.0} if s == 0 else {"loss": 1.0}, [0, 1])


def test_run_seeds_with_fit_results():
    from kdlib.repro import run_seeds
    from kdlib.train import fit
    from tiny import blobs, mlp

    frame = run_seeds(lambda s: fit(mlp(seed=s), blobs(), epochs=1, batch_size=16, seed=s), [0, 1, 2])
    assert {"final_accuracy", "best_accuracy", "best_epoch", "train_seconds", "steps"} <= set(frame.columns)
    assert list(frame["steps"]) == [6, 6, 6] and frame.attrs["summary"]["final_accuracy"]["n"] == 3


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_is_bit_identical_and_different_seeds_differ_for_fit_and_distill():
    from kdlib.distill import distill
    from kdlib.train import fit
    from tiny import blobs, mlp

    teacher = mlp(hidden=32, seed=1)
    fit(teacher, blobs(), epochs=3, batch_size=16, lr=1e-2, seed=0)

    def train_fit(seed):
        model = torch.nn.Sequential(mlp(seed=seed), torch.nn.Dropout(0.2))  # dropout: the global RNG matters too
        result = fit(model, blobs(), epochs=2, batch_size=16, seed=seed)
        return model.state_dict(), result

    def train_distill(seed):
        student = mlp(seed=seed)
        result = distill(student, teacher, blobs(), epochs=2, batch_size=16, seed=seed)
        return student.state_dict(), result

    def timeless(result):
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in result.history]

    for train in (train_fit, train_distill):
        (w1, r1), (w2, r2), (w3, r3) = train(7), train(7), train(8)
        assert _same(w1, w2)
        assert timeless(r1) == timeless(r2) and r1.final_accuracy == r2.final_accuracy
        assert not _same(w1, w3) and timeless(r1) != timeless(r3)
