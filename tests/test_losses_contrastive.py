import copy
import math

import pytest
import torch
import torch.nn.functional as F

from kdlib.losses import CRDLoss


def randn(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def crd_bank(student_dim=6, teacher_dim=10, num_samples=40, **kw):
    kw = {"embed_dim": 4, "num_negatives": 7, "temperature": 0.5, **kw}
    return CRDLoss(student_dim, teacher_dim, num_samples, **kw)


def crd_queue(student_dim=6, teacher_dim=10, queue_size=9, **kw):
    kw = {"embed_dim": 4, "temperature": 0.5, **kw}
    return CRDLoss(student_dim, teacher_dim, memory="queue", queue_size=queue_size, **kw)


def set_identity_heads(crd):
    with torch.no_grad():
        for head in (crd.embed_student, crd.embed_teacher):
            head.linear.weight.copy_(torch.eye(*head.linear.weight.shape))
            head.linear.bias.zero_()


def embed(head, x):
    """The head written out: flatten, Linear, divide by the L2 norm."""
    z = x.reshape(x.shape[0], -1) @ head.linear.weight.T + head.linear.bias
    return z / z.norm(dim=1, keepdim=True)


def reference_contrast_loss(p, num_samples):
    """RepDistiller's ContrastLoss (Eq. 18) written out: p is (N, K+1) exp(score)/Z, positive in column 0."""
    eps = 1e-7
    n, m = p.shape[0], p.shape[1] - 1
    noise = m / num_samples
    log_d1 = torch.log(p[:, 0] / (p[:, 0] + noise + eps))
    log_d0 = torch.log(noise / (p[:, 1:] + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / n


def reference_bank_step(crd, fs, ft, idx, rows, z=None):
    """One CRD step as the reference code computes it; returns (loss, (Z_S, Z_T), new banks)."""
    with torch.no_grad():
        s, t = embed(crd.embed_student, fs), embed(crd.embed_teacher, ft)
        mem_s, mem_t = crd.memory_student.clone(), crd.memory_teacher.clone()
        out_s = torch.exp(torch.einsum("nkd,nd->nk", mem_t[rows], s) / crd.temperature)  # student anchor
        out_t = torch.exp(torch.einsum("nkd,nd->nk", mem_s[rows], t) / crd.temperature)  # teacher anchor
        if z is None:
            z = (out_s.mean() * crd.num_samples, out_t.mean() * crd.num_samples)
        loss = reference_contrast_loss(out_s / z[0], crd.num_samples) + reference_contrast_loss(
            out_t / z[1], crd.num_samples
        )
        m = crd.momentum
        for mem, e in ((mem_s, s), (mem_t, t)):
            new = mem[idx] * m + e * (1 - m)
            mem[idx] = new / new.norm(dim=1, keepdim=True)
    return loss, z, (mem_s, mem_t)


# --- memory="bank": the paper's NCE -------------------------------------------------------------------------


def test_bank_matches_reference_code_over_two_steps():
    """Z from the first batch only, scores against the *other* side's bank, update after the loss."""
    crd = crd_bank(momentum=0.3)
    z = None
    for step in range(2):
        fs, ft = randn(5, 6, seed=2 * step), randn(5, 10, seed=2 * step + 1)
        idx = torch.tensor([[3, 17, 0, 39, 8], [17, 2, 39, 30, 5]][step])  # 17 and 39 repeat: updated rows are read
        torch.manual_seed(10 + step)
        rows = crd.sample_indices(idx)
        expected, z, (mem_s, mem_t) = reference_bank_step(crd, fs, ft, idx, rows, z)
        torch.manual_seed(10 + step)
        value = crd(fs, ft, idx)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(crd.normalizer, torch.stack(z), rtol=1e-5, atol=0)
        torch.testing.assert_close(crd.memory_student, mem_s)
        torch.testing.assert_close(crd.memory_teacher, mem_t)


def test_bank_hand_computed_value():
    crd = CRDLoss(2, 2, 4, embed_dim=2, num_negatives=1, temperature=1.0)
    set_identity_heads(crd)
    with torch.no_grad():
        crd.memory_teacher[0] = torch.tensor([1.0, 0.0])
        crd.memory_teacher[2] = torch.tensor([0.0, 1.0])
        crd.memory_student[0] = torch.tensor([0.0, 1.0])
        crd.memory_student[2] = torch.tensor([0.6, 0.8])
    # s = (1, 0), t = (0, 1); positive row 0, negative row 2; M = 4, K = 1, tau = 1, K/M = 1/4.
    # student anchor vs teacher bank: scores (1, 0), exp (e, 1), Z_S = 4 (e + 1)/2 = 7.43656,
    #   P = (0.365529, 0.134471), l_S = -log(P0/(P0 + 1/4)) - log((1/4)/(P1 + 1/4)) = 0.521136 + 0.430407 = 0.951543
    # teacher anchor vs student bank: scores (1, 0.8), exp (e, 2.225541), Z_T = 2 (e + e^0.8) = 9.887646,
    #   P = (0.274917, 0.225083), l_T = 0.646771 + 0.642029 = 1.288800;   total 2.240342
    value = crd(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]),
                contrast_index=torch.tensor([[0, 2]]))
    e = math.e
    zs, zt = 2 * (e + 1), 2 * (e + math.exp(0.8))
    ls = -math.log((e / zs) / (e / zs + 0.25)) - math.log(0.25 / (1 / zs + 0.25))
    lt = -math.log((e / zt) / (e / zt + 0.25)) - math.log(0.25 / (math.exp(0.8) / zt + 0.25))
    assert ls + lt == pytest.approx(2.240342, abs=1e-6)
    assert value.item() == pytest.approx(ls + lt, rel=1e-6)
    torch.testing.assert_close(crd.normalizer, torch.tensor([zs, zt]))


def test_bank_update_is_momentum_average_then_renormalised_at_positives_only():
    crd = crd_bank(momentum=0.3)  # not 0.5, so swapping m and 1 - m is caught
    before_s, before_t = crd.memory_student.clone(), crd.memory_teacher.clone()
    fs, ft, idx = randn(3, 6, seed=1), randn(3, 10, seed=2), torch.tensor([3, 7, 1])
    crd(fs, ft, idx)
    with torch.no_grad():
        s, t = embed(crd.embed_student, fs), embed(crd.embed_teacher, ft)
    for before, after, e in ((before_s, crd.memory_student, s), (before_t, crd.memory_teacher, t)):
        expected = F.normalize(0.3 * before[idx] + 0.7 * e, dim=1)
        torch.testing.assert_close(after[idx], expected)
        others = torch.ones(40, dtype=torch.bool)
        others[idx] = False
        assert torch.equal(after[others], before[others])
        torch.testing.assert_close(after[idx].norm(dim=1), torch.ones(3))
    assert not crd.memory_student.requires_grad and not crd.memory_teacher.requires_grad


def test_bank_initialisation_like_reference():
    torch.manual_seed(3)
    crd = CRDLoss(6, 10, 2000, embed_dim=48, num_negatives=100)
    bound = 1 / math.sqrt(48 / 3)
    for bank in (crd.memory_student, crd.memory_teacher):
        assert bank.shape == (2000, 48)
        assert bank.min() >= -bound and bank.max() <= bound and bank.max() > 0.99 * bound
        assert bank.norm(dim=1).mean().item() == pytest.approx(1.0, abs=0.02)
    assert not torch.equal(crd.memory_student, crd.memory_teacher)
    assert torch.isnan(crd.log_z).all()
    assert {n for n, _ in crd.named_buffers()} == {"memory_student", "memory_teacher", "log_z"}


def test_z_is_estimated_on_the_first_batch_only():
    crd = crd_bank()
    crd(randn(4, 6, seed=1), randn(4, 10, seed=2), torch.arange(4))
    z = crd.normalizer.clone()
    assert torch.isfinite(z).all() and (z > 0).all()
    crd(randn(4, 6, seed=3, scale=5), randn(4, 10, seed=4, scale=5), torch.arange(4, 8))
    assert torch.equal(crd.normalizer, z)


def test_negatives_are_uniform_draws_with_the_positive_first():
    crd = crd_bank(num_samples=20, num_negatives=19)
    idx = torch.tensor([5, 0, 19])
    rows = crd.sample_indices(idx)
    assert rows.shape == (3, 20) and rows.dtype == torch.int64
    assert torch.equal(rows[:, 0], idx)
    assert rows.min() >= 0 and rows.max() < 20
    many = torch.cat([crd.sample_indices(idx)[:, 1:].reshape(-1) for _ in range(50)])
    counts = torch.bincount(many, minlength=20).float()
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()
    assert not torch.equal(crd.sample_indices(idx), crd.sample_indices(idx))


# --- memory="queue": InfoNCE over a FIFO queue -------------------------------------------------------------


def test_queue_hand_computed_info_nce():
    crd = CRDLoss(2, 2, memory="queue", queue_size=3, embed_dim=2, temperature=1.0)
    set_identity_heads(crd)
    # batch 1: the queues are empty, so each anchor sees only its positive: softmax over one logit, loss 0
    first = crd(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    assert first.item() == 0.0
    # now queue_student = [(0, 1)], queue_teacher = [(1, 0)]; batch 2: s = (1, 0), t = (0.6, 0.8), tau = 1
    # student anchor: logits (s.t, s.queue_teacher) = (0.6, 1.0): -log(e^0.6 / (e^0.6 + e^1)) = log(1 + e^0.4) = 0.913015
    # teacher anchor: logits (t.s, t.queue_student) = (0.6, 0.8): log(1 + e^0.2) = 0.798139;  total 1.711154
    value = crd(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]]))
    assert value.item() == pytest.approx(math.log(1 + math.exp(0.4)) + math.log(1 + math.exp(0.2)), rel=1e-6)
    assert value.item() == pytest.approx(1.711154, abs=1e-6)


def reference_queue_loss(crd, fs, ft):
    """InfoNCE both ways written out with the filled part of each queue as negatives."""
    s, t = embed(crd.embed_student, fs), embed(crd.embed_teacher, ft)
    filled = int(crd.queue_filled)
    qs, qt = crd.queue_student[:filled], crd.queue_teacher[:filled]
    tau = crd.temperature
    total = 0.0
    for a, p, q in ((s, t, qt), (t, s, qs)):
        pos = torch.exp((a * p).sum(1) / tau)
        neg = torch.exp(a @ q.T / tau).sum(1)
        total = total - torch.log(pos / (pos + neg)).mean()
    return total


def test_queue_matches_formula_while_filling_and_after_wrapping():
    crd = crd_queue(queue_size=9)
    for step in range(6):  # batches of 4 into a queue of 9: partly filled, then wrapped
        fs, ft = randn(4, 6, seed=2 * step), randn(4, 10, seed=2 * step + 1)
        with torch.no_grad():
            expected = reference_queue_loss(crd, fs, ft)
        torch.testing.assert_close(crd(fs, ft), expected)


def test_queue_pointer_wraps_and_holds_exactly_the_last_queue_size_embeddings():
    crd = crd_queue(queue_size=5)
    seen_s, seen_t = [], []
    for step in range(4):  # 8 embeddings through a queue of 5
        fs, ft = randn(2, 6, seed=step), randn(2, 10, seed=50 + step)
        crd(fs, ft, None)
        with torch.no_grad():
            seen_s.append(embed(crd.embed_student, fs))
            seen_t.append(embed(crd.embed_teacher, ft))
        assert int(crd.queue_filled) == min(2 * (step + 1), 5)
    assert int(crd.queue_ptr) == 8 % 5
    all_s, all_t = torch.cat(seen_s), torch.cat(seen_t)
    # slot j holds the most recent embedding number i with i % 5 == j: embeddings 5, 6, 7 overwrote 0, 1, 2
    order = torch.tensor([5, 6, 7, 3, 4])
    torch.testing.assert_close(crd.queue_student, all_s[order])
    torch.testing.assert_close(crd.queue_teacher, all_t[order])
    # a batch larger than the queue keeps its last queue_size rows
    fs, ft = randn(7, 6, seed=9), randn(7, 10, seed=10)
    crd(fs, ft)
    with torch.no_grad():
        last_s = embed(crd.embed_student, fs)[-5:]
    assert int(crd.queue_ptr) == (3 + 5) % 5
    assert set(map(tuple, crd.queue_student.tolist())) == set(map(tuple, last_s.tolist()))


def test_queue_memory_does_not_depend_on_data_set_size():
    crd = crd_queue(queue_size=11, embed_dim=4)
    sizes = {n: b.numel() for n, b in crd.named_buffers()}
    assert sizes == {"queue_student": 44, "queue_teacher": 44, "queue_ptr": 1, "queue_filled": 1}
    # indices far beyond any data set size are fine: the queue never looks at them
    crd(randn(3, 6), randn(3, 10), torch.tensor([10**9, 5, 2**40]))


# --- both memories ---------------------------------------------------------------------------------------


def make(memory, **kw):
    return crd_bank(**kw) if memory == "bank" else crd_queue(**kw)


def run_steps(crd, steps=3, n=4, seed=0):
    losses = []
    for step in range(steps):
        fs, ft = randn(n, 6, seed=seed + 2 * step), randn(n, 10, seed=seed + 2 * step + 1)
        losses.append(crd(fs, ft, torch.arange(n) + n * step))
    return torch.stack(losses)


@pytest.mark.parametrize("memory", ["bank", "queue"])
def test_shapes_and_finiteness(memory):
    crd = make(memory)
    fs, ft = randn(4, 2, 3, seed=1), randn(4, 10, 1, 1, seed=2)  # flattened to (4, 6) and (4, 10)
    for _ in range(2):
        value = crd(fs, ft, torch.arange(4))
        assert value.shape == () and value.dtype == torch.float32
        assert torch.isfinite(value) and value.item() >= 0


@pytest.mark.parametrize("memory", ["bank", "queue"])
def test_same_seed_same_run(memory):
    def run(seed):
        torch.manual_seed(seed)
        crd = make(memory)
        return run_steps(crd), crd.state_dict()

    (a, state_a), (b, state_b) = run(7), run(7)
    assert torch.equal(a, b)
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    c, _ = run(8)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("memory", ["bank", "queue"])
def test_loss_lower_for_aligned_than_random_embeddings(memory):
    n, d = 8, 6
    crd = make(memory, student_dim=d, teacher_dim=d, embed_dim=d, num_samples=n, num_negatives=7,
               queue_size=16, temperature=0.2)
    set_identity_heads(crd)
    teacher = randn(n, d, seed=1)
    with torch.no_grad():
        if memory == "bank":  # both banks already hold the teacher's embeddings; Z fixed by hand
            crd.memory_student.copy_(F.normalize(teacher, dim=1))
            crd.memory_teacher.copy_(F.normalize(teacher, dim=1))
            crd.log_z.fill_(math.log(n))
        else:  # the queues hold other samples' embeddings
            crd(randn(16, d, seed=2), randn(16, d, seed=2))
    state = copy.deepcopy(crd.state_dict())
    rows = torch.stack([torch.roll(torch.arange(n), -i) for i in range(n)])  # row i: i first, then all others
    idx = torch.arange(n)
    aligned = crd(teacher.clone(), teacher, idx, **({"contrast_index": rows} if memory == "bank" else {}))
    for seed in range(5):
        crd.load_state_dict(state)
        random = crd(randn(n, d, seed=10 + seed), teacher, idx,
                     **({"contrast_index": rows} if memory == "bank" else {}))
        assert aligned.item() < random.item() - 1.0


@pytest.mark.parametrize("memory", ["bank", "queue"])
def test_gradient_reaches_student_and_both_heads_never_the_teacher(memory):
    crd = make(memory)
    run_steps(crd, steps=2)  # non-empty queue, Z already set
    fs = randn(4, 6, seed=20).requires_grad_()
    ft = randn(4, 10, seed=21).requires_grad_()
    crd(fs, ft, torch.arange(4)).backward()
    assert ft.grad is None
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    for head in (crd.embed_student, crd.embed_teacher):
        assert head.linear.weight.grad is not None and head.linear.weight.grad.abs().sum() > 0
    assert all(not b.requires_grad for b in crd.buffers())


@pytest.mark.parametrize("memory", ["bank", "queue"])
def test_state_dict_round_trip(memory):
    torch.manual_seed(0)
    a = make(memory)
    run_steps(a, steps=2)
    torch.manual_seed(1)
    b = make(memory)
    b.load_state_dict(a.state_dict())
    fs, ft, idx = randn(4, 6, seed=30), randn(4, 10, seed=31), torch.tensor([1, 2, 3, 4])
    torch.manual_seed(5)
    va = a(fs, ft, idx)
    torch.manual_seed(5)
    vb = b(fs, ft, idx)
    assert torch.equal(va, vb)
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), key


@pytest.mark.parametrize("memory", ["bank", "queue"])
def test_to_double_and_half_module(memory):
    crd = make(memory)
    run_steps(crd, steps=2)
    fs, ft, idx = randn(4, 6, seed=40), randn(4, 10, seed=41), torch.arange(4)
    wide = copy.deepcopy(crd).to(torch.float64)
    assert wide.embed_student.linear.weight.dtype == torch.float64
    torch.manual_seed(3)
    v32 = crd(fs, ft, idx)
    torch.manual_seed(3)
    v64 = wide(fs, ft, idx)
    assert v64.dtype == torch.float64
    torch.testing.assert_close(v64.float(), v32, rtol=1e-4, atol=1e-4)
    narrow = copy.deepcopy(crd).to(torch.bfloat16)
    value = narrow(fs, ft, idx)
    assert value.dtype == torch.float32 and torch.isfinite(value)


@pytest.mark.parametrize("memory", ["bank", "queue"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_give_finite_float32_loss(memory, dtype):
    crd = make(memory)
    run_steps(crd, steps=1)
    fs = randn(4, 6, seed=50).to(dtype).requires_grad_()
    value = crd(fs, randn(4, 10, seed=51).to(dtype), torch.arange(4))
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert fs.grad.dtype == dtype and torch.isfinite(fs.grad).all()


@pytest.mark.parametrize("memory", ["bank", "queue"])
def test_extreme_features_finite_value_and_gradient(memory):
    crd = make(memory, temperature=0.01)
    run_steps(crd, steps=1)
    fs = torch.tensor([[1e4, -1e4, 0, 0, 1e4, 0]] * 3 + [[-1e4] * 6]).requires_grad_()
    ft = torch.full((4, 10), 1e4)
    value = crd(fs, ft, torch.arange(4))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(fs.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("memory", ["bank", "queue"])
def test_cpu_cuda_agreement(memory):
    cpu = make(memory)
    run_steps(cpu, steps=2)
    gpu = copy.deepcopy(cpu).to("cuda")
    fs, ft, idx = randn(4, 6, seed=60), randn(4, 10, seed=61), torch.tensor([3, 1, 4, 5])
    kw = {"contrast_index": torch.randint(0, 40, (4, 8))} if memory == "bank" else {}
    if kw:
        kw["contrast_index"][:, 0] = idx
    value_cpu = cpu(fs, ft, idx, **kw)
    value_gpu = gpu(fs.cuda(), ft.cuda(), idx.cuda(), **{k: v.cuda() for k, v in kw.items()})
    assert value_gpu.device.type == "cuda"
    torch.testing.assert_close(value_gpu.cpu(), value_cpu, rtol=1e-4, atol=1e-5)
    for (key, x), y in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        torch.testing.assert_close(y.cpu(), x, rtol=1e-4, atol=1e-5, msg=key)
    if memory == "bank":  # sampled negatives live on the bank's device
        assert gpu.sample_indices(idx.cuda()).device.type == "cuda"


def test_training_student_features_aligns_neighbourhoods_with_the_teacher():
    """Tiny end to end: the student's features are a free matrix; CRD pulls its neighbourhoods to the teacher's.

    The teacher's features form 4 tight clusters; the student starts random (its nearest neighbour is in the
    same cluster about 1 time in 4). Across seeds 0-9 the trained student's rate was 0.78-1.0.
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n, classes = 64, 4
    labels = torch.arange(n) % classes
    teacher = 3 * torch.randn(classes, 16, generator=g)[labels] + torch.randn(n, 16, generator=g)
    student = torch.randn(n, 8, generator=g).requires_grad_()

    def same_class_neighbour(x):
        x = F.normalize(x, dim=1)
        sim = (x @ x.T).fill_diagonal_(-2.0)
        return (labels[sim.argmax(1)] == labels).float().mean().item()

    crd = CRDLoss(8, 16, n, embed_dim=8, num_negatives=16, temperature=0.2)
    opt = torch.optim.Adam([student, *crd.parameters()], lr=0.05)
    before, losses = same_class_neighbour(student.detach()), []
    for _ in range(100):
        idx = torch.randperm(n)[:32]
        loss = crd(student[idx], teacher[idx], idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert same_class_neighbour(teacher) == 1.0
    assert before < 0.4
    assert same_class_neighbour(student.detach()) > 0.7
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_samples": 10, "num_negatives": 10}, ValueError, r"num_negatives \(10\) must be smaller than num_samples"),
        ({"num_samples": None}, ValueError, "memory='bank' needs num_samples"),
        ({"num_samples": 0}, ValueError, "num_samples must be an integer >= 1"),
        ({"memory": "queue", "queue_size": 0}, ValueError, "queue_size must be an integer >= 1"),
        ({"memory": "moco"}, ValueError, "memory must be 'bank' or 'queue'"),
        ({"temperature": 0.0}, ValueError, "temperature must be"),
        ({"temperature": -1.0}, ValueError, "temperature must be"),
        ({"momentum": 1.5}, ValueError, r"momentum .* \[0, 1\]"),
        ({"embed_dim": 0}, ValueError, "embed_dim must be an integer >= 1"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    kwargs = {"num_samples": 40, **kwargs}
    with pytest.raises(error, match=match):
        CRDLoss(6, 10, kwargs.pop("num_samples"), **kwargs)


def test_bad_forward_inputs_give_one_clear_error():
    crd = crd_bank()
    fs, ft, idx = randn(4, 6), randn(4, 10), torch.arange(4)
    with pytest.raises(ValueError, match=r"index values must lie in \[0, num_samples\) = \[0, 40\)"):
        crd(fs, ft, torch.tensor([0, 1, 2, 40]))
    with pytest.raises(ValueError, match=r"index values must lie in \[0, num_samples\)"):
        crd(fs, ft, torch.tensor([0, -1, 2, 3]))
    with pytest.raises(ValueError, match="memory='bank' needs index"):
        crd(fs, ft)
    with pytest.raises(ValueError, match="batch sizes differ"):
        crd(fs, randn(5, 10), idx)
    with pytest.raises(ValueError, match="empty batch"):
        crd(torch.zeros(0, 6), torch.zeros(0, 10), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"index must have shape \(4,\)"):
        crd(fs, ft, torch.arange(3))
    with pytest.raises(TypeError, match="index must be int64"):
        crd(fs, ft, torch.arange(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="built with student_dim=6"):
        crd(randn(4, 7), ft, idx)
    with pytest.raises(ValueError, match="built with teacher_dim=10"):
        crd(fs, randn(4, 2, 3), idx)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        crd(randn(4), randn(4), idx)
    with pytest.raises(TypeError, match="floating-point"):
        crd(torch.zeros(4, 6, dtype=torch.long), ft, idx)
    with pytest.raises(ValueError, match=r"contrast_index must have shape \(batch, num_negatives \+ 1\)"):
        crd(fs, ft, idx, contrast_index=torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="contrast_index values must lie"):
        crd(fs, ft, idx, contrast_index=torch.full((4, 8), 99))
    with pytest.raises(ValueError, match="memory='queue' takes its negatives from the queue"):
        crd_queue()(fs, ft, contrast_index=torch.zeros(4, 8, dtype=torch.long))
    # nothing was written to the bank or Z by the failed calls
    assert torch.isnan(crd.log_z).all()


def test_shared_negatives_equal_per_anchor_sampling_with_the_same_rows_for_every_anchor():
    shared = crd_bank(num_negatives=7, shared_negatives=True)
    per_anchor = copy.deepcopy(shared)
    per_anchor.shared_negatives = False
    fs, ft, idx = randn(5, 6, seed=1), randn(5, 10, seed=2), torch.tensor([3, 0, 17, 39, 8])
    torch.manual_seed(11)
    loss_shared = shared(fs, ft, idx)
    torch.manual_seed(11)
    negatives = torch.randint(0, 40, (7,))
    rows = torch.cat([idx[:, None], negatives.expand(5, 7)], dim=1)
    loss_per_anchor = per_anchor(fs, ft, idx, contrast_index=rows)
    torch.testing.assert_close(loss_shared, loss_per_anchor)
    torch.testing.assert_close(shared.memory_student, per_anchor.memory_student)  # same update
    assert "shared_negatives=True" in repr(shared)
