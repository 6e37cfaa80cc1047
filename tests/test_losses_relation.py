import math

import pytest
import torch

from kdlib.losses import (
    pairwise_distances,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    similarity_matrix,
    sp_loss,
)


def feats(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def orthogonal(d, seed=0):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


def huber(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def rows(x):
    return x.reshape(x.shape[0], -1).double().tolist()


# ------------------------------------------------------------------------------------------------ naive formulas


def naive_similarity(x):
    f = rows(x)
    gram = [[dot(a, b) for b in f] for a in f]
    return [[g / math.sqrt(dot(row, row)) for g in row] for row in gram]


def naive_sp(s, t):
    g_s, g_t = naive_similarity(s), naive_similarity(t)
    n = len(g_s)
    return sum((g_s[i][j] - g_t[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2


def naive_distances(x):
    f = rows(x)
    return [[math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b))) for b in f] for a in f]


def naive_rkd_distance(s, t):
    """Distances over the mean distance of distinct pairs, Huber, averaged over all N^2 entries."""
    out = []
    for x in (s, t):
        d = naive_distances(x)
        n = len(d)
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        out.append([[v / mean for v in row] for row in d])
    n = len(out[0])
    return sum(huber(out[0][i][j] - out[1][i][j]) for i in range(n) for j in range(n)) / n**2


def naive_cosines(x):
    """c[j][i][k]: cosine of the angle at vertex j between samples i and k (0 if degenerate)."""
    f = rows(x)
    n = len(f)

    def unit(i, j):
        v = [a - b for a, b in zip(f[i], f[j])]
        norm = math.sqrt(dot(v, v))
        return [0.0] * len(v) if norm == 0 else [a / norm for a in v]

    return [[[dot(unit(i, j), unit(k, j)) for k in range(n)] for i in range(n)] for j in range(n)]


def naive_rkd_angle(s, t):
    c_s, c_t = naive_cosines(s), naive_cosines(t)
    n = len(c_s)
    r = range(n)
    return sum(huber(c_s[j][i][k] - c_t[j][i][k]) for i in r for j in r for k in r) / n**3


def naive_pkt(s, t, eps=1e-7):
    def probabilities(x):
        f = rows(x)
        unit = [[a / (math.sqrt(dot(v, v)) + eps) for a in v] for v in f]
        kernel = [[(dot(a, b) + 1) / 2 for b in unit] for a in unit]
        return [[k / sum(row) for k in row] for row in kernel]

    p_s, p_t = probabilities(s), probabilities(t)
    n = len(p_s)
    return sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps)) for i in range(n) for j in range(n)) / n**2


# ------------------------------------------------------------------------------------------------ formulas


def test_similarity_matrix_and_distances_match_formula():
    x = feats(5, 3, 2, seed=1)
    expected_g = torch.tensor(naive_similarity(x), dtype=torch.float64)
    expected_d = torch.tensor(naive_distances(x), dtype=torch.float64)
    torch.testing.assert_close(similarity_matrix(x).double(), expected_g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pairwise_distances(x).double(), expected_d, rtol=1e-5, atol=1e-6)
    assert torch.equal(pairwise_distances(x).diagonal(), torch.zeros(5))


def test_sp_matches_formula():
    s, t = feats(6, 4, 3, seed=2), feats(6, 9, seed=3)
    assert sp_loss(s, t).item() == pytest.approx(naive_sp(s, t), rel=1e-5)


def test_rkd_distance_matches_formula():
    s, t = feats(6, 4, seed=4), feats(6, 2, 5, seed=5, scale=3.0)
    assert rkd_distance_loss(s, t).item() == pytest.approx(naive_rkd_distance(s, t), rel=1e-5)


def test_rkd_angle_matches_formula():
    s, t = feats(5, 4, seed=6), feats(5, 7, seed=7)
    assert rkd_angle_loss(s, t).item() == pytest.approx(naive_rkd_angle(s, t), rel=1e-5)


def test_pkt_matches_formula():
    s, t = feats(6, 5, seed=8), feats(6, 3, 3, seed=9)
    assert pkt_loss(s, t).item() == pytest.approx(naive_pkt(s, t), rel=1e-5)


def test_rkd_loss_is_weighted_sum():
    s, t = feats(6, 4, seed=10), feats(6, 8, seed=11)
    torch.testing.assert_close(rkd_loss(s, t), 25 * rkd_distance_loss(s, t) + 50 * rkd_angle_loss(s, t))
    torch.testing.assert_close(
        rkd_loss(s, t, distance_weight=1.0, angle_weight=2.0), rkd_distance_loss(s, t) + 2 * rkd_angle_loss(s, t)
    )
    torch.testing.assert_close(rkd_loss(s, t, angle_weight=0.0), 25 * rkd_distance_loss(s, t))
    # without the angle term two samples are enough
    assert torch.isfinite(rkd_loss(s[:2], t[:2], angle_weight=0.0))


# ------------------------------------------------------------------------------------------------ hand values


def test_sp_hand_computed_value():
    # student rows e1, e2: Gram = I, rows already unit -> G_S = I
    # teacher rows e1, e1: Gram = all ones, rows normalised -> every entry 1/sqrt2
    # ||G_S - G_T||_F^2 = 2 (1 - 1/sqrt2)^2 + 2 (1/sqrt2)^2 = 2 (1.5 - sqrt2) + 1 = 4 - 2 sqrt2; over N^2 = 4
    s = torch.eye(2)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert sp_loss(s, t).item() == pytest.approx(1 - math.sqrt(2) / 2, rel=1e-6)


def test_rkd_distance_hand_computed_value():
    # 1-D embeddings. student 0, 1, 3: distances (01, 02, 12) = 1, 3, 2, mean 2 -> 0.5, 1.5, 1
    # teacher 0, 1, 2: distances 1, 2, 1, mean 4/3 -> 0.75, 1.5, 0.75
    # differences -0.25, 0, 0.25 -> Huber 0.5 x^2 = 0.03125, 0, 0.03125; each pair twice in the 3x3 matrix:
    # (4 * 0.03125) / 9 = 0.125 / 9
    s = torch.tensor([[0.0], [1.0], [3.0]])
    t = torch.tensor([[0.0], [1.0], [2.0]])
    assert rkd_distance_loss(s, t).item() == pytest.approx(0.125 / 9, rel=1e-6)


def test_rkd_angle_hand_computed_value():
    # student: right triangle (0,0), (1,0), (0,1): cosines at the vertices 0, 1/sqrt2, 1/sqrt2
    # teacher: collinear 0, 1, 2 (1-D): cosines at the vertices +1, -1, +1
    # differences -1, 1 + 1/sqrt2, 1/sqrt2 - 1 -> Huber 0.5, 1/sqrt2 + 0.5, 0.5 (1 - 1/sqrt2)^2; these sum to 1.75.
    # each vertex appears as two ordered triplets (i, k) and (k, i); every other of the 27 entries is equal
    # (i == k gives cosine 1 on both sides, degenerate ones 0): loss = 2 * 1.75 / 27
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0], [1.0], [2.0]])
    assert rkd_angle_loss(s, t).item() == pytest.approx(3.5 / 27, rel=1e-6)


def test_pkt_hand_computed_value():
    # student rows e1, e2: cosines I, kernel (I + 1)/2 = [[1, .5], [.5, 1]], rows -> (2/3, 1/3)
    # teacher rows e1, e1: cosines all 1, kernel all 1, rows -> (1/2, 1/2)
    # per row KL(P_T || P_S) = 0.5 log(0.5 / (2/3)) + 0.5 log(0.5 / (1/3)) = 0.5 log(1.125); two rows: log(1.125)
    # mean over N^2 = 4 entries: log(1.125) / 4
    s = torch.eye(2)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert pkt_loss(s, t).item() == pytest.approx(math.log(1.125) / 4, rel=1e-5)
    # the direction matters: KL(P_S || P_T) would be (2/3 log(4/3) + 1/3 log(2/3)) / 2 = 0.02832
    assert pkt_loss(t, s).item() == pytest.approx((2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)) / 2, rel=1e-5)


# ------------------------------------------------------------------------------------------------ invariants

LOSSES = [sp_loss, rkd_distance_loss, rkd_angle_loss, rkd_loss, pkt_loss]


@pytest.mark.parametrize("loss", LOSSES)
def test_zero_when_equal_and_positive_otherwise(loss):
    t = feats(6, 5, seed=12)
    assert loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-7)
    for seed in range(5):
        assert loss(feats(6, 3, seed=100 + seed), t).item() > 0


@pytest.mark.parametrize("loss", LOSSES)
def test_invariant_to_global_scale_and_rotation_of_either_embedding(loss):
    s, t = feats(6, 5, seed=13), feats(6, 4, seed=14)
    base = loss(s, t)
    torch.testing.assert_close(loss(7.0 * s, t), base, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss(s, 0.01 * t), base, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss(s @ orthogonal(5, seed=1), t), base, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss(s, t @ orthogonal(4, seed=2)), base, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", [rkd_distance_loss, rkd_angle_loss, rkd_loss])
def test_rkd_invariant_to_translation(loss):
    s, t = feats(6, 5, seed=15), feats(6, 4, seed=16)
    base = loss(s, t)
    torch.testing.assert_close(loss(s + feats(1, 5, seed=17, scale=10.0), t), base, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss(s, t - 3.0), base, rtol=1e-4, atol=1e-6)


def test_sp_and_pkt_see_translations():
    # a loss built on inner products (SP) or cosines (PKT) depends on the origin; guards against centring
    s, t = feats(6, 5, seed=18), feats(6, 4, seed=19)
    assert sp_loss(s + 2.0, t).item() != pytest.approx(sp_loss(s, t).item(), rel=1e-3)
    assert pkt_loss(s + 2.0, t).item() != pytest.approx(pkt_loss(s, t).item(), rel=1e-3)


def test_pkt_invariant_to_per_sample_scale_and_sp_is_not():
    s, t = feats(6, 5, seed=20), feats(6, 4, seed=21)
    scales = torch.tensor([0.1, 1.0, 3.0, 10.0, 0.5, 100.0]).unsqueeze(1)
    torch.testing.assert_close(pkt_loss(s * scales, t), pkt_loss(s, t), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(pkt_loss(s, t * scales), pkt_loss(s, t), rtol=1e-5, atol=1e-8)
    assert sp_loss(s * scales, t).item() != pytest.approx(sp_loss(s, t).item(), rel=1e-3)


def test_rkd_distance_normalises_by_mean_distance_not_per_row():
    # scaling one sample far away changes the relations: a loss that ignored it would be wrong
    s, t = feats(5, 3, seed=22), feats(5, 3, seed=23)
    moved = s.clone()
    moved[0] *= 10
    assert rkd_distance_loss(moved, t).item() != pytest.approx(rkd_distance_loss(s, t).item(), rel=1e-3)


def test_sp_rows_are_normalised():
    x = feats(5, 4, seed=24, scale=50.0)
    torch.testing.assert_close(similarity_matrix(x).norm(dim=1), torch.ones(5))


# ------------------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("loss", LOSSES)
def test_gradient_into_student_only(loss):
    s = feats(5, 3, 2, seed=25).requires_grad_()
    t = feats(5, 7, seed=26).requires_grad_()
    loss(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", [sp_loss, rkd_distance_loss, rkd_angle_loss, pkt_loss])
def test_gradcheck(loss):
    s = feats(4, 3, seed=27).double().requires_grad_()
    t = feats(4, 5, seed=28).double()
    assert torch.autograd.gradcheck(lambda x: loss(x, t), (s,))


@pytest.mark.parametrize("loss", LOSSES)
def test_identical_samples_give_finite_loss_and_gradient(loss):
    t = feats(4, 3, seed=29)
    s = feats(4, 3, seed=30)
    s[1] = s[0]  # two identical student samples: zero distance, undefined direction
    s.requires_grad_()
    value = loss(s, t)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()
    # the undefined direction between the twins teaches nothing, instead of F.normalize's 1/eps gradient
    assert s.grad.abs().max() < 10
    # a batch of identical (or all-zero) samples
    for same in (torch.ones(4, 3), torch.zeros(4, 3)):
        same.requires_grad_()
        value = loss(same, t)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(same.grad).all()
        value = loss(t, same.detach())
        assert torch.isfinite(value)


@pytest.mark.parametrize("loss", LOSSES)
def test_finite_for_extreme_and_half_precision(loss):
    s = feats(5, 4, seed=31, scale=1e4).requires_grad_()
    t = feats(5, 6, seed=32, scale=1e4)
    value = loss(s, t)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()
    for dtype in (torch.float16, torch.bfloat16):
        # the Gram matrix of 300-scale features (~1e5 per entry) overflows float16 unless computed in float32
        s_half = feats(5, 4, seed=33, scale=300).to(dtype).requires_grad_()
        value = loss(s_half, feats(5, 6, seed=34).to(dtype))
        value.backward()
        assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(s_half.grad).all()


# ------------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("loss", LOSSES)
def test_bad_inputs(loss):
    with pytest.raises(ValueError, match="at least 2 samples|at least 3 samples"):
        loss(feats(1, 4), feats(1, 4))
    with pytest.raises(ValueError, match="batch sizes differ"):
        loss(feats(4, 4), feats(5, 4))
    with pytest.raises(ValueError, match="empty batch"):
        loss(torch.zeros(0, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        loss(feats(4), feats(4))
    with pytest.raises(TypeError, match="floating-point"):
        loss(torch.zeros(4, 3, dtype=torch.long), feats(4, 3))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        loss(feats(4, 3), [[0.0] * 3] * 4)


def test_rkd_angle_needs_three_samples_and_weights_are_checked():
    with pytest.raises(ValueError, match="RKD's angle loss .* at least 3 samples, got a batch of 2"):
        rkd_angle_loss(feats(2, 4), feats(2, 4))
    with pytest.raises(ValueError, match="at least 3 samples"):
        rkd_loss(feats(2, 4), feats(2, 4))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="distance_weight must be"):
            rkd_loss(feats(4, 4), feats(4, 4), distance_weight=bad)
        with pytest.raises(ValueError, match="angle_weight must be"):
            rkd_loss(feats(4, 4), feats(4, 4), angle_weight=bad)
    with pytest.raises(ValueError, match="both 0"):
        rkd_loss(feats(4, 4), feats(4, 4), distance_weight=0, angle_weight=0)
    with pytest.raises(ValueError, match="eps must be"):
        pkt_loss(feats(4, 4), feats(4, 4), eps=0.0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        similarity_matrix(feats(4))
    with pytest.raises(TypeError, match="floating-point"):
        pairwise_distances(torch.zeros(4, 2, dtype=torch.int64))


# ------------------------------------------------------------------------------------------------ devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("loss", LOSSES)
def test_relation_losses_agree_on_cpu_and_cuda(loss):
    s, t = feats(8, 4, 3, seed=35), feats(8, 10, seed=36)
    torch.testing.assert_close(loss(s.cuda(), t.cuda()).cpu(), loss(s, t), rtol=1e-4, atol=1e-6)
