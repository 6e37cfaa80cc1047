r"""Contrastive representation distillation (CRD): a loss module with a memory of past embeddings.

CRD (Tian, Krishnan & Isola, ICLR 2020) trains the student so that its embedding of a sample can tell the
teacher's embedding of the *same* sample apart from the teacher's embeddings of other samples. The
negatives come from a memory of embeddings computed in earlier steps, so there are thousands of them
per anchor at the cost of one batch. Two memories are offered:

* ``memory="bank"``: the paper's two memory banks, one row per training sample (``num_samples x embed_dim``
  each), with the paper's NCE loss. Needs the dataset index of every sample in the batch.
* ``memory="queue"``: a bounded FIFO queue of the last ``queue_size`` embeddings of each side (as in MoCo,
  He et al. 2020) with the InfoNCE loss. Its memory does not grow with the data set and it needs no
  dataset indices.

Shapes: features are ``(N, ...)`` float tensors, flattened to ``(N, D)``; ``index`` is ``(N,)`` int64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.losses.checks import check_features, check_temperature

__all__ = ["CRDLoss"]

_MEMORIES = ("bank", "queue")


class _Embed(nn.Module):
    """Linear projection followed by L2 normalisation (the reference's ``Embed``), computed in >= float32."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.linear.weight, self.linear.bias
        dtype = torch.promote_types(w.dtype, torch.float32)
        z = F.linear(x.reshape(x.shape[0], -1).to(dtype), w.to(dtype), b.to(dtype))
        return F.normalize(z, dim=1)


class CRDLoss(nn.Module):
    r"""Contrastive representation distillation loss (Tian, Krishnan & Isola, 2020).

    Both networks' features are projected by trainable heads :math:`g_S, g_T` (Linear, then L2
    normalisation) onto the unit sphere in :math:`\mathbb{R}^d`: :math:`s_n = g_S(f^S_n)`,
    :math:`t_n = g_T(f^T_n)`. The teacher's features are detached; its head :math:`g_T` is trained with
    the student, so pass this module's parameters to the optimizer.

    **memory="bank"** (the paper, following the reference code HobbitLong/RepDistiller ``crd/``). Two banks
    :math:`M^S, M^T \in \mathbb{R}^{M \times d}` hold one embedding per training sample (:math:`M` =
    ``num_samples``). For the anchor :math:`s_n` of sample :math:`i_n`, the scores against the teacher bank
    are, with :math:`j_{n,0} = i_n` (the positive) and :math:`j_{n,1..K}` drawn uniformly from
    :math:`[0, M)` (the :math:`K` negatives),

    .. math::

        P_{n,k} = \frac{\exp(s_n^\top M^T_{j_{n,k}} / \tau)}{Z_S},

        \ell_S = -\frac{1}{N} \sum_{n=1}^{N} \Big[ \log \frac{P_{n,0}}{P_{n,0} + K/M}
                  + \sum_{k=1}^{K} \log \frac{K/M}{P_{n,k} + K/M} \Big]

    and :math:`\ell_T` is the same with the teacher anchor :math:`t_n` against the student bank
    :math:`M^S` (same :math:`j`). The loss is :math:`\ell_S + \ell_T`. This is the NCE objective of the
    paper (critic :math:`h = P/(P + K/M)`, noise distribution uniform, :math:`P_n = 1/M`). The
    normalisation constant :math:`Z_S = M \cdot \mathrm{mean}_{n,k} \exp(s_n^\top M^T_{j_{n,k}}/\tau)`
    (likewise :math:`Z_T`) is estimated once, on the first batch, and then kept fixed, as in the reference
    code (the paper's critic has no :math:`Z`; the reference's :math:`Z` produced the published numbers).
    After the loss is computed, the rows of the positives are updated without autograd:
    :math:`M^S_{i_n} \leftarrow \mathrm{normalize}(m\,M^S_{i_n} + (1-m)\,s_n)` and likewise :math:`M^T`
    with :math:`t_n`. The banks start uniform in :math:`[-\sqrt{3/d}, \sqrt{3/d}]` (rows of norm about 1),
    as in the reference.

    Differences from the reference code, all deliberate:

    * The loss is evaluated in log space (``softplus``), without the reference's ``eps = 1e-7``; the values
      agree to about 1e-6 relative and small temperatures cannot overflow ``exp``.
    * Negatives are drawn uniformly from the whole bank (so a negative can occasionally be the positive
      itself, as with the reference's uniform alias sampler). The reference's CIFAR-100 loader
      (``--mode exact``, used for the published table) instead draws them from samples of *other classes*;
      pass such indices as ``contrast_index`` to reproduce that.
    * The default ``num_negatives`` is 4096 (the reference defaults to 16384) so the loss stays cheap on a
      CPU; it is a parameter.
    * Duplicate indices within one batch update their row once, with one of the duplicates' embeddings.

    **memory="queue"** (not in the paper). Each side keeps a FIFO queue of its last ``queue_size`` (:math:`Q`)
    embeddings, :math:`U^S, U^T \in \mathbb{R}^{Q \times d}`, with a write pointer, as in MoCo (He et al.,
    2020). The loss is InfoNCE (cross-entropy with the positive pair at position 0):

    .. math::

        \ell_S = -\frac{1}{N} \sum_{n=1}^{N} \log
            \frac{\exp(s_n^\top t_n / \tau)}{\exp(s_n^\top t_n / \tau) + \sum_{q} \exp(s_n^\top U^T_q / \tau)}

    and :math:`\ell_T` symmetrically (anchor :math:`t_n`, positive :math:`s_n`, negatives :math:`U^S`); the
    loss is :math:`\ell_S + \ell_T`. Only the filled slots of a queue serve as negatives, so the first batch
    (empty queues) gives exactly 0. After the loss, the batch's detached embeddings are written at the
    pointer (the oldest entries are overwritten; of a batch larger than :math:`Q` only the last :math:`Q`
    rows are kept). How it differs from the paper:

    * InfoNCE, a softmax over :math:`1 + Q` candidates, replaces the paper's NCE with a uniform noise
      distribution; there is no normalisation constant :math:`Z` and no dependence on the data set size.
    * The positive is the other network's *current* embedding of the same sample (gradients flow through both
      heads, as in CLIP's symmetric loss), not a stale memory row, and no momentum average is kept.
    * Memory is :math:`O(Q \cdot d)` (two queues) instead of :math:`O(M \cdot d)`; ``num_samples``,
      ``num_negatives`` and ``index`` are not used (``index`` may be ``None``). The queue can hold an older
      embedding of a sample that is in the current batch; with :math:`Q \ll M` this is rare.

    Defaults and sources: ``embed_dim=128``, ``temperature=0.07``, ``momentum=0.5`` are the reference's
    ``feat_dim``, ``nce_t``, ``nce_m``; ``num_negatives=4096`` (reference ``nce_k`` 16384, see above).
    The reference's CIFAR-100 runs weigh the loss by :math:`\beta = 0.8` next to cross-entropy with weight 1
    (``-r 1 -a 0 -b 0.8``); that weight belongs to the training objective, not to this module.

    Args:
        student_dim: number of student features per sample (product of the non-batch dimensions).
        teacher_dim: number of teacher features per sample.
        num_samples: training-set size :math:`M` (rows of each bank); required for ``memory="bank"``.
        embed_dim: :math:`d`, the dimension of the shared embedding space.
        num_negatives: :math:`K` negatives per anchor (``memory="bank"``); must be < ``num_samples``.
        temperature: :math:`\tau > 0`.
        momentum: :math:`m \in [0, 1]` of the bank update (1 never updates).
        memory: ``"bank"`` or ``"queue"``.
        queue_size: :math:`Q \ge 1` (``memory="queue"``).
        shared_negatives: ``memory="bank"`` only: draw one set of :math:`K` negative rows per batch, shared by
            all anchors, instead of :math:`K` per anchor as the reference does. Each anchor still sees a
            uniform sample of the bank (same expected loss), but the scores become one matrix product
            instead of gathering an :math:`N \times K \times d` tensor, which on a CPU is the difference
            between seconds and milliseconds per step at :math:`K` in the thousands.

    Shapes:
        ``forward(student_features (N, ...), teacher_features (N, ...), index (N,) int64)`` returns a scalar
        in float32 (or wider, if the module was converted with ``.double()``), averaged over the batch and
        summed over the two directions. fp16/bf16 features are promoted. ``index`` holds the dataset indices
        of the batch's samples (unlabeled samples need only a valid index).

    Randomness: the negatives are drawn with the global torch RNG of the memory's device (seed it with
    ``torch.manual_seed``); the initial bank is drawn with the global CPU RNG at construction.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        num_samples: int | None = None,
        *,
        embed_dim: int = 128,
        num_negatives: int = 4096,
        temperature: float = 0.07,
        momentum: float = 0.5,
        memory: str = "bank",
        queue_size: int = 4096,
        shared_negatives: bool = False,
    ) -> None:
        super().__init__()
        self.shared_negatives = bool(shared_negatives)
        if memory not in _MEMORIES:
            raise ValueError(f"memory must be 'bank' or 'queue', got {memory!r}")
        for name, value in (("student_dim", student_dim), ("teacher_dim", teacher_dim), ("embed_dim", embed_dim)):
            _check_positive_int(name, value)
        self.temperature = check_temperature(temperature)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum of the memory update must lie in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.memory = memory
        self.student_dim, self.teacher_dim, self.embed_dim = int(student_dim), int(teacher_dim), int(embed_dim)
        self.embed_student = _Embed(self.student_dim, self.embed_dim)
        self.embed_teacher = _Embed(self.teacher_dim, self.embed_dim)
        if memory == "bank":
            self._init_bank(num_samples, num_negatives)
        else:
            self._init_queue(queue_size)

    def _init_bank(self, num_samples: int | None, num_negatives: int) -> None:
        if num_samples is None:
            raise ValueError("memory='bank' needs num_samples, the training-set size (one bank row per sample)")
        _check_positive_int("num_samples", num_samples)
        _check_positive_int("num_negatives", num_negatives)
        if num_negatives >= num_samples:
            raise ValueError(
                f"num_negatives ({num_negatives}) must be smaller than num_samples ({num_samples}); "
                "use fewer negatives or memory='queue'"
            )
        self.num_samples, self.num_negatives = int(num_samples), int(num_negatives)
        bound = 1.0 / math.sqrt(self.embed_dim / 3)
        for name in ("memory_student", "memory_teacher"):
            self.register_buffer(name, torch.rand(self.num_samples, self.embed_dim).mul_(2 * bound).sub_(bound))
        # log Z for the student-anchor and teacher-anchor directions; NaN until the first batch sets it.
        self.register_buffer("log_z", torch.full((2,), float("nan")))

    def _init_queue(self, queue_size: int) -> None:
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be an integer >= 1, got {queue_size!r}")
        self.queue_size = queue_size
        self.register_buffer("queue_student", torch.zeros(queue_size, self.embed_dim))
        self.register_buffer("queue_teacher", torch.zeros(queue_size, self.embed_dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        if self.memory == "bank":
            size = (f"num_samples={self.num_samples}, num_negatives={self.num_negatives}, momentum={self.momentum}, "
                    f"shared_negatives={self.shared_negatives}")
        else:
            size = f"queue_size={self.queue_size}"
        return f"memory={self.memory!r}, embed_dim={self.embed_dim}, temperature={self.temperature}, {size}"

    @property
    def normalizer(self) -> torch.Tensor:
        """The bank's constants :math:`(Z_S, Z_T)`, NaN before the first batch (``memory="bank"`` only)."""
        if self.memory != "bank":
            raise AttributeError("only memory='bank' has a normalisation constant Z")
        return self.log_z.exp()

    def sample_indices(self, index: torch.Tensor) -> torch.Tensor:
        """``(N, K + 1)`` bank rows: column 0 is ``index``, the rest uniform in ``[0, num_samples)``.

        Uses the global RNG of the bank's device, so seeding it makes the draws reproducible.
        """
        device = self.memory_student.device
        drawn = torch.randint(0, self.num_samples, (index.shape[0], self.num_negatives + 1), device=device)
        drawn[:, 0] = index.to(device)
        return drawn

    def forward(
        self,
        student_features: torch.Tensor,
        teacher_features: torch.Tensor,
        index: torch.Tensor | None = None,
        *,
        contrast_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """CRD loss of one batch; updates the memory afterwards (see the class docstring).

        Args:
            student_features: ``(N, ...)`` with ``student_dim`` values per sample; gradients flow into these.
            teacher_features: ``(N, ...)`` with ``teacher_dim`` values per sample; detached.
            index: ``(N,)`` int64 dataset indices in ``[0, num_samples)``; required for ``memory="bank"``,
                unused (may be ``None``) for ``memory="queue"``.
            contrast_index: optional ``(N, num_negatives + 1)`` int64 bank rows to use instead of the uniform
                draw, positive in column 0 (the reference's ``contrast_idx``, e.g. negatives from other
                classes). ``memory="bank"`` only.
        """
        check_features(student_features, teacher_features, min_dim=2, what="features")
        _check_width("student", student_features, self.student_dim)
        _check_width("teacher", teacher_features, self.teacher_dim)
        n = student_features.shape[0]
        if index is not None:
            _check_index(index, n)
        s = self.embed_student(student_features)
        t = self.embed_teacher(teacher_features.detach())
        if self.memory == "queue":
            if contrast_index is not None:
                raise ValueError("contrast_index selects bank rows; memory='queue' takes its negatives from the queue")
            return self._queue_loss(s, t)
        if index is None:
            raise ValueError("memory='bank' needs index, the (N,) dataset indices of the batch's samples")
        self._check_range(index, "index")
        if contrast_index is not None:
            contrast_index = self._check_contrast_index(contrast_index, n)
        elif not self.shared_negatives:
            contrast_index = self.sample_indices(index)
        return self._bank_loss(s, t, index, contrast_index)

    def _bank_loss(
        self, s: torch.Tensor, t: torch.Tensor, index: torch.Tensor, contrast_index: torch.Tensor | None
    ) -> torch.Tensor:
        device = self.memory_student.device
        index = index.to(device)
        # (N, K+1) logits: student anchors against teacher rows, teacher anchors against student rows.
        if contrast_index is None:  # shared negatives: one draw of K rows for the whole batch
            negatives = torch.randint(0, self.num_samples, (self.num_negatives,), device=device)
            logits_s = _shared_logits(s, self.memory_teacher, index, negatives, self.temperature)
            logits_t = _shared_logits(t, self.memory_student, index, negatives, self.temperature)
        else:
            contrast_index = contrast_index.to(device)
            logits_s = _gathered_logits(s, self.memory_teacher, contrast_index, self.temperature)
            logits_t = _gathered_logits(t, self.memory_student, contrast_index, self.temperature)
        log_z = self._estimate_log_z(logits_s.detach(), logits_t.detach())
        log_noise = math.log(self.num_negatives / self.num_samples)  # log(K * P_n), P_n = 1 / M
        loss = _nce(logits_s - log_z[0], log_noise) + _nce(logits_t - log_z[1], log_noise)
        self._update_bank(s.detach(), t.detach(), index)
        return loss

    def _estimate_log_z(self, logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
        """log Z = log M + log mean exp(logits), set on the first batch and then kept (no host sync)."""
        count = math.log(logits_s.numel())
        estimate = torch.stack([logits_s.logsumexp((0, 1)), logits_t.logsumexp((0, 1))])
        estimate = estimate - count + math.log(self.num_samples)
        log_z = torch.where(torch.isnan(self.log_z), estimate.to(self.log_z.dtype), self.log_z)
        self.log_z.copy_(log_z)
        return log_z.to(logits_s.dtype)

    @torch.no_grad()
    def _update_bank(self, s: torch.Tensor, t: torch.Tensor, index: torch.Tensor) -> None:
        for bank, z in ((self.memory_student, s), (self.memory_teacher, t)):
            rows = bank.index_select(0, index).to(z.dtype)
            rows = F.normalize(rows * self.momentum + z * (1.0 - self.momentum), dim=1)
            bank.index_copy_(0, index, rows.to(bank.dtype))

    def _queue_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(self.queue_size, device=self.queue_ptr.device) < self.queue_filled
        loss = _info_nce(s, t, self.queue_teacher, valid, self.temperature)
        loss = loss + _info_nce(t, s, self.queue_student, valid, self.temperature)
        self._enqueue(s.detach(), t.detach())
        return loss

    @torch.no_grad()
    def _enqueue(self, s: torch.Tensor, t: torch.Tensor) -> None:
        keep = min(s.shape[0], self.queue_size)
        slots = (self.queue_ptr + torch.arange(keep, device=self.queue_ptr.device)) % self.queue_size
        self.queue_student.index_copy_(0, slots, s[-keep:].to(self.queue_student.dtype))
        self.queue_teacher.index_copy_(0, slots, t[-keep:].to(self.queue_teacher.dtype))
        self.queue_ptr.copy_((self.queue_ptr + keep) % self.queue_size)
        self.queue_filled.copy_(torch.clamp(self.queue_filled + keep, max=self.queue_size))

    def _check_range(self, idx: torch.Tensor, name: str) -> None:
        if bool(((idx < 0) | (idx >= self.num_samples)).any()):
            raise ValueError(
                f"{name} values must lie in [0, num_samples) = [0, {self.num_samples}), got min {int(idx.min())} "
                f"and max {int(idx.max())}; pass dataset indices and the training-set size as num_samples"
            )

    def _check_contrast_index(self, contrast_index: torch.Tensor, n: int) -> torch.Tensor:
        expected = (n, self.num_negatives + 1)
        if not isinstance(contrast_index, torch.Tensor) or contrast_index.dtype != torch.int64:
            raise TypeError(f"contrast_index must be an int64 tensor of shape {expected}")
        if tuple(contrast_index.shape) != expected:
            raise ValueError(
                f"contrast_index must have shape (batch, num_negatives + 1) = {expected}, "
                f"got {tuple(contrast_index.shape)}"
            )
        self._check_range(contrast_index, "contrast_index")
        return contrast_index


def _gathered_logits(anchor: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor, tau: float) -> torch.Tensor:
    """``(N, K+1)`` with entry (n, k) = anchor_n . bank[rows[n, k]] / tau; the bank rows carry no gradient."""
    picked = bank.index_select(0, rows.reshape(-1)).view(*rows.shape, -1).to(anchor.dtype)
    return torch.einsum("nkd,nd->nk", picked, anchor) / tau


def _shared_logits(
    anchor: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, negatives: torch.Tensor, tau: float
) -> torch.Tensor:
    """``(N, K+1)``: the positive ``anchor_n . bank[index_n]`` in column 0, then the same K rows for every anchor."""
    positive = (anchor * bank.index_select(0, index).to(anchor.dtype)).sum(1, keepdim=True)
    return torch.cat([positive, anchor @ bank.index_select(0, negatives).to(anchor.dtype).T], dim=1) / tau


def _nce(log_p: torch.Tensor, log_noise: float) -> torch.Tensor:
    """NCE loss of ``(N, K+1)`` log P (positive in column 0), mean over anchors, sum over candidates.

    -log(P0 / (P0 + c)) = softplus(log c - log P0) and -log(c / (Pk + c)) = softplus(log Pk - log c).
    """
    positive = F.softplus(log_noise - log_p[:, 0])
    negatives = F.softplus(log_p[:, 1:] - log_noise).sum(1)
    return (positive + negatives).mean()


def _info_nce(
    anchor: torch.Tensor, positive: torch.Tensor, queue: torch.Tensor, valid: torch.Tensor, tau: float
) -> torch.Tensor:
    """Cross-entropy with the positive pair at position 0 and the valid queue rows as negatives."""
    pos = (anchor * positive).sum(1, keepdim=True)
    # A copy: autograd keeps the negatives for the backward pass, and the queue is overwritten right after.
    neg = (anchor @ queue.to(anchor.dtype, copy=True).T).masked_fill(~valid, float("-inf"))
    logits = torch.cat([pos, neg], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(anchor.shape[0], dtype=torch.long, device=anchor.device))


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_width(side: str, features: torch.Tensor, dim: int) -> None:
    width = math.prod(features.shape[1:])
    if width != dim:
        raise ValueError(
            f"{side} features {tuple(features.shape)} have {width} values per sample but the loss was built "
            f"with {side}_dim={dim}; pass the feature width the loss was created for"
        )


def _check_index(index: torch.Tensor, n: int) -> None:
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"index must be a torch.Tensor of dataset indices, got {type(index).__name__}")
    if index.dtype != torch.int64:
        raise TypeError(f"index must be int64 dataset indices, got {index.dtype}")
    if tuple(index.shape) != (n,):
        raise ValueError(f"index must have shape ({n},) to match the batch, got {tuple(index.shape)}")
