import math

import pytest
import torch
from torch import nn

from kdlib.data import Dataset, Split
from kdlib.train import FitResult, evaluate, fit, lr_factor, predict
from tiny import blobs, mlp, snapshot


def test_fit_learns_and_returns_history_as_data():
    data = blobs()
    result = fit(mlp(), data, epochs=5, batch_size=16, lr=1e-2, seed=0)
    assert isinstance(result, FitResult)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5]
    assert result.steps == 5 * 6
    assert result.final_accuracy > 0.9
    assert result.best_accuracy == max(r["test_accuracy"] for r in result.history)
    assert result.best_epoch in [r["epoch"] for r in result.history]
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "train_seconds"} <= set(
        result.history[0]
    )
    frame = result.to_frame()
    assert list(frame["epoch"]) == [1, 2, 3, 4, 5]


def test_fit_by_steps_cycles_the_data_and_evaluates_every_n_steps():
    result = fit(mlp(), blobs(), steps=25, batch_size=16, eval_every=10, seed=0)
    assert [r["step"] for r in result.history] == [10, 20, 25]
    assert result.history[-1]["epoch"] == pytest.approx(25 / 6, abs=1e-3)


def test_same_seed_gives_bit_identical_weights_on_cpu():
    def run(seed):
        model = mlp(seed=seed)
        result = fit(model, blobs(), epochs=2, batch_size=16, seed=seed)
        return torch.cat([p.flatten() for p in model.parameters()]), result.history[-1]["test_loss"]

    w1, l1 = run(3)
    w2, l2 = run(3)
    w3, _ = run(4)
    assert torch.equal(w1, w2) and l1 == l2
    assert not torch.equal(w1, w3)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizers_reduce_the_loss(optimizer):
    result = fit(mlp(), blobs(), epochs=4, batch_size=16, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-2)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_schedules():
    cosine = lr_factor("cosine", 100, 10, (), 0.1)
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)
    multistep = lr_factor("multistep", 100, 10, (5, 8), 0.1)
    assert [multistep(s) for s in (0, 49, 50, 79, 80)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert lr_factor("constant", 100, 10, (), 0.1)(77) == 1.0
    result = fit(mlp(), blobs(), epochs=2, batch_size=16, lr=0.1, schedule="multistep", milestones=(1,))
    assert [r["lr"] for r in result.history] == pytest.approx([0.01, 0.01])
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor("linear", 10, 1, (), 0.1)


def test_extra_loss_terms_are_weighted_logged_and_modules_are_optimized():
    class Term(nn.Module):
        name = "pull"
        weight = 0.5

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, batch, logits):
            return (self.scale * logits).pow(2).mean()

    term = Term()
    result = fit(mlp(), blobs(), epochs=2, batch_size=16, loss_terms=[term], ce_weight=0.0)
    assert "loss/pull" in result.history[0]
    assert result.history[0]["train_loss"] == pytest.approx(0.5 * result.history[0]["loss/pull"], rel=1e-5)
    assert term.scale.item() != 1.0  # the term's own parameter was trained


def test_evaluate_and_predict_restore_mode():
    model = mlp()
    data = blobs()
    model.train()
    stats = evaluate(model, data)
    assert model.training and 0.0 <= stats["accuracy"] <= 1.0 and stats["n"] == len(data.test)
    logits = predict(model, data.test.x, batch_size=7)
    assert logits.shape == (len(data.test), 3)
    torch.testing.assert_close(logits, model.eval()(data.test.x))


def test_bf16_autocast_runs_on_cpu_and_fp16_needs_cuda():
    result = fit(mlp(), blobs(), epochs=1, batch_size=16, amp="bf16")
    assert math.isfinite(result.history[-1]["train_loss"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16.*CUDA"):
            fit(mlp(), blobs(), epochs=1, amp="fp16")


def test_non_finite_loss_names_the_step_and_term():
    class Exploding:
        name = "boom"
        weight = 1.0

        def __call__(self, batch, logits):
            return logits.pow(2).sum() * float("inf")

    with pytest.raises(FloatingPointError, match=r"step 1 .*boom=inf"):
        fit(mlp(), blobs(), epochs=1, loss_terms=[Exploding()])


def test_grad_clip_is_applied():
    result = fit(mlp(), blobs(), epochs=1, batch_size=16, lr=1.0, optimizer="sgd", grad_clip=1e-3)
    assert math.isfinite(result.history[-1]["train_loss"])


def test_bad_settings_give_clear_errors():
    data = blobs()
    with pytest.raises(ValueError, match="exactly one of epochs= or steps="):
        fit(mlp(), data)
    with pytest.raises(ValueError, match="exactly one of epochs= or steps="):
        fit(mlp(), data, epochs=1, steps=3)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        fit(mlp(), data, epochs=0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        fit(mlp(), data, epochs=1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="outputs 5 classes but blobs has 3; create it with num_classes=3"):
        fit(mlp(classes=5), data, epochs=1)
    with pytest.raises(ValueError, match=r"cannot take blobs inputs of shape \(8,\)"):
        fit(mlp(features=10), data, epochs=1)
    bad = Dataset("bad", data.train, Split(data.test.x, data.test.y + 5), 3)
    with pytest.raises(ValueError, match=r"test labels of bad lie in \[5, 7\] but num_classes is 3"):
        fit(mlp(), bad, epochs=1)
    with pytest.raises(TypeError, match="kdlib.data.Dataset"):
        fit(mlp(), (data.train.x, data.train.y), epochs=1)
    with pytest.raises(ValueError, match="amp must be"):
        fit(mlp(), data, epochs=1, amp="int8")


def test_unlabeled_inputs_skip_cross_entropy_and_accuracy():
    from kdlib.data import UNLABELED, with_unlabeled
    from kdlib.losses import cross_entropy

    logits = torch.randn(4, 3)
    y = torch.tensor([0, UNLABELED, 2, UNLABELED])
    torch.testing.assert_close(cross_entropy(logits, y, ignore_index=UNLABELED),
                               torch.nn.functional.cross_entropy(logits[[0, 2]], y[[0, 2]]))
    none = cross_entropy(logits.requires_grad_(), torch.full((4,), UNLABELED), ignore_index=UNLABELED)
    assert none.item() == 0.0 and none.requires_grad

    data = blobs()
    extended = with_unlabeled(data, data.test.x)
    assert len(extended.train) == len(data.train) + len(data.test)
    assert int((extended.train.y == UNLABELED).sum()) == len(data.test)
    result = fit(mlp(), extended, epochs=2, batch_size=16)
    assert 0.0 <= result.history[-1]["train_accuracy"] <= 1.0
    only_unlabeled = with_unlabeled(Dataset("u", Split(data.train.x[:0], data.train.y[:0]), data.test, 3), data.train.x)
    with pytest.raises(ValueError, match="has no labels; train with ce_weight=0"):
        fit(mlp(), only_unlabeled, epochs=1)
    with pytest.raises(ValueError, match=r"shape \(5,\) per sample; blobs has \(8,\)"):
        with_unlabeled(data, torch.randn(3, 5))


def test_agreement_counts_matching_top1_predictions():
    from kdlib.train import agreement

    data = blobs()
    model = mlp()
    assert agreement(model, model, data) == 1.0

    class Constant(nn.Module):
        def __init__(self, cls):
            super().__init__()
            self.cls = cls
            self.dummy = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return nn.functional.one_hot(torch.full((x.shape[0],), self.cls), 3).float() + 0 * self.dummy

    assert agreement(Constant(0), Constant(0), data.test) == 1.0
    assert agreement(Constant(0), Constant(1), data.test) == 0.0


# ------------------------------------------------------------------------ on_nonfinite, checkpoint arguments


class NaNAt:
    """A loss term that is 0 except on the listed steps (or every step), where it is NaN."""

    name = "boom"
    weight = 1.0

    def __init__(self, steps=None):
        self.steps, self.calls = steps, 0

    def __call__(self, batch, logits):
        self.calls += 1
        bad = self.steps is None or self.calls in self.steps
        return logits.sum() * (float("nan") if bad else 0.0)


def test_rollback_skips_a_non_finite_step_and_finishes_with_finite_weights():
    model = mlp()
    result = fit(model, blobs(), epochs=5, batch_size=16, lr=1e-2, loss_terms=[NaNAt({5})], on_nonfinite="rollback")
    assert result.skipped_steps == [5] and result.steps == 30
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    assert result.final_accuracy > 0.9
    assert result.history[-1]["lr"] == 0.0  # the skipped step counted: the cosine schedule still ends at 0


def test_rollback_gives_up_after_three_consecutive_rollbacks_naming_the_step_and_term():
    model = mlp()
    start = snapshot(model)
    with pytest.raises(FloatingPointError, match=r"step 4 \(boom=nan.*gave up after 3 consecutive rollbacks"):
        fit(model, blobs(), epochs=1, batch_size=16, loss_terms=[NaNAt()], on_nonfinite="rollback")
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())  # every step was rolled back
    # three non-consecutive bad steps are fine
    result = fit(mlp(), blobs(), epochs=2, batch_size=16, loss_terms=[NaNAt({2, 3, 4, 6, 7, 8})], on_nonfinite="rollback")
    assert result.skipped_steps == [2, 3, 4, 6, 7, 8]


def test_raise_is_still_the_default_and_raises_at_the_first_non_finite_step():
    for kwargs in ({}, {"on_nonfinite": "raise"}):
        with pytest.raises(FloatingPointError, match=r"step 2 \(boom=nan"):
            fit(mlp(), blobs(), epochs=1, batch_size=16, loss_terms=[NaNAt({2})], **kwargs)


def test_rollback_restores_term_state_changed_in_the_bad_step_and_catches_non_finite_gradients():
    class Memory(nn.Module):
        """Like CRD's memory bank: a buffer the forward pass updates; poisoned on step 3."""

        name = "memory"
        weight = 1.0

        def __init__(self):
            super().__init__()
            self.register_buffer("bank", torch.zeros(3))
            self.calls = 0

        def forward(self, batch, logits):
            self.calls += 1
            self.bank += float("nan") if self.calls == 3 else 1.0
            return logits.new_zeros(()) + self.bank.sum() * 0

    class NaNGradient:
        """Finite value (0) but a NaN gradient (d sqrt(|x|)/dx at 0) on step 6."""

        name = "sqrt"
        weight = 1.0
        calls = 0

        def __call__(self, batch, logits):
            self.calls += 1
            if self.calls == 6:
                return (logits - logits.detach()).abs().sqrt().sum()
            return logits.new_zeros(())

    memory = Memory()
    model = mlp()
    result = fit(model, blobs(), epochs=2, batch_size=16, loss_terms=[memory, NaNGradient()], on_nonfinite="rollback")
    assert result.skipped_steps == [3, 6]
    assert torch.equal(memory.bank, torch.full((3,), 10.0))  # 12 steps, 2 rolled back: 10 increments
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_arguments_are_checked(tmp_path):
    data = blobs()
    with pytest.raises(ValueError, match="on_nonfinite must be 'raise' or 'rollback'"):
        fit(mlp(), data, epochs=1, on_nonfinite="skip")
    with pytest.raises(ValueError, match="checkpoint_every= needs checkpoint="):
        fit(mlp(), data, epochs=1, checkpoint_every=2)
    with pytest.raises(ValueError, match="resume=True needs checkpoint="):
        fit(mlp(), data, epochs=1, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive int"):
        fit(mlp(), data, epochs=1, checkpoint=tmp_path / "c.pt", checkpoint_every=0)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        fit(mlp(), data, epochs=1, checkpoint=tmp_path)
    with pytest.raises(TypeError, match="resume must be True or False"):
        fit(mlp(), data, epochs=1, checkpoint=tmp_path / "c.pt", resume="yes")


def test_checkpoints_do_not_change_the_run(tmp_path):
    a, b = mlp(), mlp()
    plain = fit(a, blobs(), epochs=2, batch_size=16, seed=1)
    saved = fit(b, blobs(), epochs=2, batch_size=16, seed=1, checkpoint=tmp_path / "c.pt", checkpoint_every=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    drop = lambda h: [{k: v for k, v in r.items() if k != "train_seconds"} for r in h]  # noqa: E731
    assert drop(plain.history) == drop(saved.history) and saved.resumed_from == 0


def test_the_resumable_batch_stream_draws_what_batches_draws():
    from kdlib.data import RandomShift, batches
    from kdlib.sources import TensorStream as _BatchStream

    split, shift = blobs().train, RandomShift(2)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    stream = _BatchStream(split, 20, g1, shift)
    expected = [b for _ in range(3) for b in batches(split, 20, shuffle=True, generator=g2, augment=shift)]
    for i, want in enumerate(expected):
        if i == 7:  # save and restore mid-epoch into a fresh stream
            state = stream.state_dict()
            stream = _BatchStream(split, 20, torch.Generator(), shift)
            stream.load_state_dict(state)
        got = stream.next()
        assert torch.equal(got.index, want.index) and torch.equal(got.x, want.x) and torch.equal(got.y, want.y)


def test_history_records_the_mean_gradient_norm_before_clipping():
    def run(grad_clip):
        model, seen = mlp(), []

        def hook(module, args):  # at step t's forward, p.grad still holds step t-1's (clipped) gradients
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            if module.training and grads:
                seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

        model.register_forward_pre_hook(hook)
        result = fit(model, blobs(), steps=12, batch_size=16, lr=0.05, optimizer="sgd", eval_every=1,
                     grad_clip=grad_clip)
        return [r["grad_norm"] for r in result.history], seen

    logged, seen = run(None)
    assert len(logged) == 12 and len(seen) == 11
    assert logged[:-1] == pytest.approx(seen, rel=1e-5)  # eval_every=1: each record is one step's norm
    clipped_logged, clipped_seen = run(1e-3)
    assert clipped_logged[0] == pytest.approx(logged[0], rel=1e-6)  # same first step, norm before clipping
    assert min(clipped_logged) > 1e-3 and max(clipped_seen) <= 1e-3 * (1 + 1e-4)
    # the mean over a window of steps, here one epoch of 6 steps, every step measured
    per_epoch = fit(mlp(), blobs(), epochs=2, batch_size=16, lr=0.05, optimizer="sgd", grad_norm_every=1)
    assert per_epoch.history[0]["grad_norm"] == pytest.approx(sum(logged[:6]) / 6, rel=1e-5)
    # by default it is measured every 16 steps and at each evaluation step: here steps 4 and 6 of the epoch
    sampled = fit(mlp(), blobs(), epochs=2, batch_size=16, lr=0.05, optimizer="sgd", grad_norm_every=4)
    assert sampled.history[0]["grad_norm"] == pytest.approx((logged[3] + logged[5]) / 2, rel=1e-5)


def test_grad_norm_leaves_out_rolled_back_steps():
    result = fit(mlp(), blobs(), epochs=2, batch_size=16, loss_terms=[NaNAt({2, 8})], on_nonfinite="rollback")
    assert result.skipped_steps == [2, 8]
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in result.history)


def test_channels_last_and_compile_train_the_same_model(monkeypatch):
    from torch import nn

    from kdlib.data import Dataset, Split

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 2, 6, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    data = Dataset("maps", Split(x[:48], y[:48]), Split(x[48:], y[48:]), 3)

    def conv():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))

    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or real_compile(m, backend="eager"))
    plain, last, comp = conv(), conv(), conv()
    fit(plain, data, epochs=2, batch_size=16)
    fit(last, data, epochs=2, batch_size=16, channels_last=True)
    result = fit(comp, data, epochs=2, batch_size=16, compile=True)
    assert len(compiled) == 1 and result.config["compile"] is True
    assert last[0].weight.is_contiguous(memory_format=torch.channels_last)
    for a, b, c in zip(plain.parameters(), last.parameters(), comp.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)


def test_device_auto_is_the_default_and_keeps_the_model_where_it_is():
    from kdlib.train import training_device

    model = mlp()
    assert training_device(model, "auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert training_device(model, None) == torch.device("cpu")
    assert fit(mlp(), blobs(), epochs=1).config["device"] == str(training_device(model, "auto"))


def test_clipping_covers_the_loss_terms_parameters_too():
    from torch import nn

    class Shift(nn.Module):  # a loss term with a parameter of its own (like a FitNets adapter)
        name, weight = "shift", 1.0

        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.zeros(3))

        def forward(self, batch, logits):
            return ((logits + self.b - 10.0) ** 2).mean()

    model, term = mlp(), Shift()
    before = [p.detach().clone() for p in [*model.parameters(), *term.parameters()]]
    fit(model, blobs(), steps=1, batch_size=16, optimizer="sgd", momentum=0.0, lr=1.0, grad_clip=1e-3,
        loss_terms=[term], schedule="constant")
    after = [p.detach() for p in [*model.parameters(), *term.parameters()]]
    moved = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(a - b) for a, b in zip(after, before)]))
    assert float(term.b.detach().abs().sum()) > 0 and float(moved) <= 1e-3 * (1 + 1e-4)
