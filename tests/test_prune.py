"""Unstructured pruning (kdlib.prune): exact masks, schedules, lottery tickets, sensitivity, storage."""

import math

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from kdlib.distill import distill
from kdlib.profile import serialized_size
from kdlib.prune import (
    agp_sparsity,
    copy_model,
    decode_sparse,
    dense_state_dict,
    encode_sparse,
    fine_tune,
    gradual,
    is_pruned,
    iterative,
    lottery_ticket,
    make_permanent,
    one_shot,
    overall_sparsity,
    pick_sparsities,
    plot_sensitivity,
    prune_global,
    prune_layerwise,
    prune_random,
    rewind,
    round_sparsities,
    save_rewind_point,
    sensitivity,
    sparsity_report,
    storage_sizes,
)
from kdlib.train import fit
from tiny import blobs, mlp

matplotlib.use("Agg")


def small_cnn(seed: int = 0) -> nn.Module:
    """Conv + BatchNorm + Linear with odd sizes, so round(s * n) is not trivial."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 7), nn.ReLU(),
        nn.Linear(7, 5),
    )


def zeros_of(module: nn.Module) -> int:
    return int((module.weight == 0).sum())


# ----------------------------------------------------------------------------------------- exact masks


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 0.95])
def test_layerwise_hits_the_sparsity_exactly_in_every_layer_and_keeps_the_largest(sparsity):
    model = small_cnn()
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    biases = {n: m.bias.detach().clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    prune_layerwise(model, sparsity)
    rows = sparsity_report(model)
    assert [r["layer"] for r in rows] == ["0", "4", "6", "overall"]
    for row in rows[:-1]:
        assert row["zeros"] == round(sparsity * row["params"])
        module = model.get_submodule(row["layer"])
        assert torch.equal(module.weight_orig, dense[row["layer"]])  # masks only; values untouched
        assert torch.equal(module.bias, biases[row["layer"]])  # biases are never pruned
        kept, dropped = dense[row["layer"]][module.weight_mask == 1], dense[row["layer"]][module.weight_mask == 0]
        if dropped.numel():
            assert kept.abs().min() >= dropped.abs().max()
    assert not hasattr(model[1], "weight_mask")  # BatchNorm untouched


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_global_hits_the_overall_sparsity_exactly(sparsity):
    model = small_cnn()
    prune_global(model, sparsity)
    overall = sparsity_report(model)[-1]
    assert overall["layer"] == "overall" and overall["params"] == 27 + 48 * 7 + 7 * 5
    assert overall["zeros"] == round(sparsity * overall["params"])
    assert overall_sparsity(model) == pytest.approx(overall["zeros"] / overall["params"])


@pytest.mark.parametrize("prune", [prune_layerwise, prune_global])
def test_pruning_again_compounds_to_the_total_and_keeps_old_zeros(prune):
    model = small_cnn()
    prune(model, 0.5)
    first = {n: m.weight_mask.clone() for n, m in model.named_modules() if hasattr(m, "weight_mask")}
    prune(model, 0.8)
    rows = sparsity_report(model)
    if prune is prune_layerwise:
        assert [r["zeros"] for r in rows[:-1]] == [round(0.8 * r["params"]) for r in rows[:-1]]
    else:
        assert rows[-1]["zeros"] == round(0.8 * rows[-1]["params"])
    for name, mask in first.items():
        now = model.get_submodule(name).weight_mask
        assert bool((now[mask == 0] == 0).all())  # what was pruned stays pruned
    prune(model, 0.8)  # same target again: nothing changes
    assert sparsity_report(model)[-1]["zeros"] == rows[-1]["zeros"]
    with pytest.raises(ValueError, match="cannot lower it"):
        prune(model, 0.3)


def test_already_zero_weights_count_after_make_permanent():
    model = small_cnn()
    make_permanent(prune_global(model, 0.6))
    prune_global(model, 0.7)
    assert sparsity_report(model)[-1]["zeros"] == round(0.7 * sparsity_report(model)[-1]["params"])


def test_global_ranking_is_global_layerwise_is_not():
    def two_scales():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 20))
        with torch.no_grad():
            model[2].weight.mul_(0.01)  # the second layer's weights are 100x smaller
        return model

    g = sparsity_report(prune_global(two_scales(), 0.5))
    assert g[1]["sparsity"] > 0.9 and g[0]["sparsity"] < 0.1  # the small layer goes first
    assert g[-1]["sparsity"] == 0.5
    lw = sparsity_report(prune_layerwise(two_scales(), 0.5))
    assert lw[0]["sparsity"] == lw[1]["sparsity"] == 0.5


def test_layers_argument_prunes_only_those():
    model = small_cnn()
    prune_global(model, 0.5, layers=["4", "6"])
    assert not hasattr(model[0], "weight_mask")
    rows = sparsity_report(model, layers=["4", "6"])
    assert rows[-1]["zeros"] == round(0.5 * (48 * 7 + 35))


def test_random_baseline_has_the_exact_count_differs_from_magnitude_and_follows_the_generator():
    masks = []
    for seed in (1, 1, 2):
        model = small_cnn()
        prune_random(model, 0.6, generator=torch.Generator().manual_seed(seed))
        for row in sparsity_report(model)[:-1]:
            assert row["zeros"] == round(0.6 * row["params"])
        masks.append(model[4].weight_mask.clone())
    magnitude = prune_layerwise(small_cnn(), 0.6)[4].weight_mask
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])
    assert not torch.equal(masks[0], magnitude)


def test_make_permanent_keeps_outputs_and_removes_orig_and_mask():
    model = small_cnn().eval()
    x = torch.randn(4, 1, 6, 6)
    prune_global(model, 0.7)
    before = model(x)
    zeros = sparsity_report(model)[-1]["zeros"]
    make_permanent(model)
    assert torch.equal(model(x), before)
    keys = list(model.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    assert not is_pruned(model)
    assert isinstance(model[4].weight, nn.Parameter)
    assert sparsity_report(model)[-1]["zeros"] == zeros


# ----------------------------------------------------------------------------------------- fine-tuning


def check_zeros_stay(model, masks, orig_before):
    for name, mask in masks.items():
        module = model.get_submodule(name)
        assert torch.equal(module.weight_mask, mask)
        assert bool((module.weight[mask == 0] == 0).all())
        assert not torch.equal(module.weight_orig[mask == 1], orig_before[name][mask == 1])  # it did train


def test_zeros_stay_zero_when_fine_tuning_with_fit():
    model, data = mlp(), blobs()
    prune_layerwise(model, 0.5)
    masks = {n: m.weight_mask.clone() for n, m in model.named_modules() if hasattr(m, "weight_mask")}
    orig = {n: m.weight_orig.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight_mask")}
    result = fit(model, data, epochs=6, batch_size=16, lr=1e-2, weight_decay=1e-2, optimizer="adamw")
    model(data.test.x)  # the hook recomputes weight = weight_orig * mask
    check_zeros_stay(model, masks, orig)
    assert result.final_accuracy > 0.8 and result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_zeros_stay_zero_when_fine_tuning_with_distill(teacher):
    model, data = mlp(), blobs()
    prune_global(model, 0.7)
    masks = {n: m.weight_mask.clone() for n, m in model.named_modules() if hasattr(m, "weight_mask")}
    orig = {n: m.weight_orig.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight_mask")}
    result = distill(model, teacher, data, epochs=3, batch_size=16, lr=1e-2)
    assert result.config["alpha"] == 0.9
    check_zeros_stay(model, masks, orig)
    via_helper = fine_tune(model, data, teacher, steps=3, batch_size=16, temperature=2.0)
    assert via_helper.config["temperature"] == 2.0
    assert fine_tune(model, data, steps=3, batch_size=16).config["ce_weight"] == 1.0
    assert sparsity_report(model)[-1]["zeros"] == round(0.7 * sparsity_report(model)[-1]["params"])


def test_copy_model_works_on_a_pruned_model_after_training():
    model = prune_global(mlp(), 0.5)
    fit(model, blobs(), steps=2, batch_size=16)
    twin = copy_model(model)
    x = blobs().test.x
    assert torch.equal(twin(x), model(x))
    assert is_pruned(twin)


# ----------------------------------------------------------------------------------------- schedules


def test_agp_formula_at_start_end_middle_and_monotone():
    kw = dict(initial=0.1, start=10, num_prunes=5, interval=4)
    assert agp_sparsity(10, 0.9, **kw) == pytest.approx(0.1)
    assert agp_sparsity(30, 0.9, **kw) == pytest.approx(0.9)
    assert agp_sparsity(0, 0.9, **kw) == pytest.approx(0.1)  # before t0
    assert agp_sparsity(99, 0.9, **kw) == pytest.approx(0.9)  # after the end
    assert agp_sparsity(20, 0.9, **kw) == pytest.approx(0.9 + (0.1 - 0.9) * 0.5**3)
    values = [agp_sparsity(t, 0.9, **kw) for t in range(0, 40)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    increments = [b - a for a, b in zip(values[10:31], values[11:31])]
    assert increments[0] > increments[-1]  # fast at first, slow at the end


def test_round_sparsities_remove_the_same_fraction_of_the_remaining():
    targets = round_sparsities(0.875, 3)
    assert targets == pytest.approx([0.5, 0.75, 0.875])


def test_iterative_and_one_shot_reach_the_target_with_fit_or_dense_teacher():
    data = blobs()
    rows = iterative(mlp(), data, 0.8, steps=3, fine_tune={"steps": 6, "batch_size": 16, "lr": 1e-2})
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert [r["sparsity"] for r in rows] == pytest.approx(round_sparsities(0.8, 3), abs=0.01)
    assert rows[-1]["sparsity"] == pytest.approx(round(0.8 * (8 * 16 + 16 * 3)) / (8 * 16 + 16 * 3))
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["pruned_accuracy"] <= 1 for r in rows)
    model = mlp()
    kd = one_shot(model, data, 0.5, scope="layerwise", teacher="dense", fine_tune={"steps": 6, "batch_size": 16})
    assert len(kd) == 1 and kd[0]["sparsity"] == 0.5
    no_ft = one_shot(mlp(), data, 0.5)
    assert no_ft[0]["accuracy"] == no_ft[0]["pruned_accuracy"]


def test_gradual_prunes_on_the_agp_schedule_between_fit_calls():
    model = mlp()
    rows = gradual(model, blobs(), 0.8, num_prunes=3, interval=4, recovery_steps=4, batch_size=16, schedule="constant")
    assert [r["train_step"] for r in rows] == [0, 4, 8, 12]
    assert rows[0]["sparsity"] == 0.0
    assert [r["sparsity"] for r in rows] == sorted(r["sparsity"] for r in rows)
    assert rows[-1]["sparsity"] == pytest.approx(round(0.8 * 176) / 176)
    assert rows[1]["sparsity"] == pytest.approx(agp_sparsity(4, 0.8, num_prunes=3, interval=4), abs=0.01)


# ----------------------------------------------------------------------------------------- lottery tickets


def test_rewind_restores_saved_weights_bit_for_bit_and_keeps_masks():
    model = mlp()
    saved = save_rewind_point(model)
    fit(model, blobs(), epochs=2, batch_size=16, lr=1e-2)
    prune_global(model, 0.6)
    masks = {n: m.weight_mask.clone() for n, m in model.named_modules() if hasattr(m, "weight_mask")}
    rewind(model, saved)
    for name, mask in masks.items():
        module = model.get_submodule(name)
        assert torch.equal(module.weight_mask, mask)
        assert torch.equal(module.weight_orig, saved[f"{name}.weight"])
        assert torch.equal(module.weight, saved[f"{name}.weight"] * mask)
        assert torch.equal(module.bias, saved[f"{name}.bias"])
    # a point saved from the masked model itself round-trips too
    again = save_rewind_point(model)
    fit(model, blobs(), steps=3, batch_size=16)
    rewind(model, again)
    assert torch.equal(model[0].weight_orig, again["0.weight"])


def test_lottery_ticket_returns_rounds_as_data():
    rows = lottery_ticket(mlp, blobs(), 0.75, rounds=2, rewind_step=2, steps=6, batch_size=16, lr=1e-2)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["sparsity"] == 0.0
    assert rows[1]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert rows[2]["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert all(0 <= r["accuracy"] <= 1 for r in rows)


# ----------------------------------------------------------------------------------------- sensitivity


def test_sensitivity_rows_leave_the_model_dense():
    model, data = mlp(), blobs()
    fit(model, data, epochs=3, batch_size=16, lr=1e-2)
    rows = sensitivity(model, data, sparsities=[0.5, 0.9, 0.99])
    assert len(rows) == 2 * 3
    assert {r["layer"] for r in rows} == {"0", "2"}
    assert set(rows[0]) == {"layer", "sparsity", "accuracy", "baseline", "drop"}
    assert not is_pruned(model)
    fig = plot_sensitivity(rows)
    assert isinstance(fig, Figure) and len(fig.axes[0].lines) == 3
    only = sensitivity(model, data, sparsities=[0.5], layers=["2"])
    assert [r["layer"] for r in only] == ["2"]


def test_pick_sparsities_takes_the_largest_sparsity_within_the_drop():
    rows = [
        dict(layer="a", sparsity=0.5, accuracy=0.90, baseline=0.90),
        dict(layer="a", sparsity=0.8, accuracy=0.895, baseline=0.90),
        dict(layer="a", sparsity=0.9, accuracy=0.80, baseline=0.90),
        dict(layer="b", sparsity=0.5, accuracy=0.70, baseline=0.90),
    ]
    assert pick_sparsities(rows, max_drop=0.01) == {"a": 0.8, "b": 0.0}
    assert pick_sparsities(rows, max_drop=0.2) == {"a": 0.9, "b": 0.5}


# ----------------------------------------------------------------------------------------- storage


def test_storage_masks_double_the_file_and_only_a_sparse_encoding_shrinks_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 200), nn.ReLU(), nn.Linear(200, 10))
    dense_bytes = serialized_size(model)
    assert storage_sizes(model)["masked"] == storage_sizes(model)["dense"] == dense_bytes
    prune_layerwise(model, 0.9)
    sizes = storage_sizes(model)
    assert sizes["masked"] > 1.8 * sizes["dense"]
    permanent = make_permanent(copy_model(model))
    assert serialized_size(permanent) == sizes["dense"]
    assert abs(sizes["dense"] - dense_bytes) < 0.01 * dense_bytes  # zeros alone do not shrink the file
    assert sizes["sparse"] < 0.25 * sizes["dense"]
    assert sizes["csr"] < sizes["dense"]
    state = dense_state_dict(model)
    back = decode_sparse(encode_sparse(state))
    assert state.keys() == back.keys() and all(torch.equal(state[k], back[k]) for k in state)
    fresh = nn.Sequential(nn.Linear(100, 200), nn.ReLU(), nn.Linear(200, 10))
    fresh.load_state_dict(back)


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, math.nan])
@pytest.mark.parametrize("prune", [prune_layerwise, prune_global, prune_random])
def test_sparsity_outside_zero_one_is_refused(prune, sparsity):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        prune(mlp(), sparsity)


def test_bad_inputs_raise_clear_errors():
    no_layers = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3))
    for fn in (prune_layerwise, prune_global, prune_random):
        with pytest.raises(ValueError, match="no prunable layers"):
            fn(no_layers, 0.5)
    with pytest.raises(ValueError, match="no prunable layers"):
        sparsity_report(no_layers)
    with pytest.raises(ValueError, match="no prunable layers"):
        sensitivity(no_layers, blobs())
    with pytest.raises(ValueError, match=r"no layer named \['fc9'\]"):
        prune_layerwise(mlp(), 0.5, layers=["0", "fc9"])
    with pytest.raises(ValueError, match=r"no layer named"):
        prune_global(mlp(), 0.5, layers="nope")
    with pytest.raises(ValueError, match="not prunable"):
        prune_global(mlp(), 0.5, layers=["1"])  # the ReLU
    model = mlp()
    with pytest.raises(ValueError, match="no pruning masks"):
        make_permanent(model)  # never pruned
    with pytest.raises(ValueError, match="no pruning masks"):
        rewind(model, save_rewind_point(model))
    saved = save_rewind_point(model)
    make_permanent(prune_global(model, 0.5))
    with pytest.raises(ValueError, match="no pruning masks"):
        make_permanent(model)  # twice
    with pytest.raises(ValueError, match="no pruning masks"):
        rewind(model, saved)  # masks were removed
    pruned = prune_global(mlp(), 0.5)
    with pytest.raises(ValueError, match="has no values for"):
        rewind(pruned, {})
    with pytest.raises(ValueError, match="scope must be"):
        one_shot(mlp(), blobs(), 0.5, scope="structured")
    with pytest.raises(ValueError, match="exceeds the final"):
        agp_sparsity(0, 0.5, initial=0.6, num_prunes=3)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        agp_sparsity(0, 1.0, num_prunes=3)
    with pytest.raises(ValueError, match="rounds/steps must be a positive integer"):
        iterative(mlp(), blobs(), 0.5, steps=0)
    with pytest.raises(TypeError, match="fine_tune must give the length"):
        iterative(mlp(), blobs(), 0.5, fine_tune={"lr": 1e-3})
    with pytest.raises(TypeError, match="sets the training length"):
        gradual(mlp(), blobs(), 0.5, num_prunes=2, interval=2, steps=4)
    with pytest.raises(TypeError, match="epochs= or steps="):
        lottery_ticket(mlp, blobs(), 0.5, rounds=1)
    with pytest.raises(ValueError, match="max_drop must be"):
        pick_sparsities([dict(layer="a", sparsity=0.5, accuracy=0.9, baseline=0.9)], max_drop=-1)
