"""Input checks shared by the losses: one clear error instead of silent broadcasting."""

from __future__ import annotations

import torch

__all__ = ["check_alpha", "check_features", "check_logits", "check_temperature"]


def check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Both are float ``(N, C)`` tensors with the same N > 0 and the same C."""
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape (batch, classes), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if student_logits.shape[1] != teacher_logits.shape[1]:
        raise ValueError(
            f"student has {student_logits.shape[1]} classes but teacher has {teacher_logits.shape[1]}; "
            "distillation needs both models to predict the same classes"
        )
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(
            f"batch sizes differ: student {student_logits.shape[0]}, teacher {teacher_logits.shape[0]}; "
            "pass the teacher's logits for the same batch"
        )
    if student_logits.shape[0] == 0:
        raise ValueError("empty batch: the KD loss of zero samples is undefined")


def check_temperature(temperature: float) -> float:
    """Return ``temperature`` as a float after checking it is a finite number > 0."""
    t = float(temperature)
    if not t > 0 or t == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float after checking it lies in [0, 1]."""
    a = float(alpha)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha weighs KD against cross-entropy and must lie in [0, 1], got {alpha!r}")
    return a


def check_features(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    same_shape: bool = False,
    min_dim: int = 2,
    what: str = "features",
) -> None:
    """Student and teacher features are float tensors of the same non-empty batch.

    Args:
        student, teacher: ``(N, ...)`` feature tensors.
        same_shape: also require identical shapes (losses that compare features element by element,
            such as FitNets hints; give the student an adapter when channel counts differ).
        min_dim: the fewest dimensions each may have (4 for maps ``(N, C, H, W)`` of a conv layer).
        what: how the error messages name the inputs.
    """
    for name, t in (("student", student), ("teacher", teacher)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} {what} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} {what} must be a floating-point tensor, got {t.dtype}")
        if t.dim() < min_dim:
            raise ValueError(f"{name} {what} need at least {min_dim} dimensions (batch first), got {tuple(t.shape)}")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"batch sizes differ: student {what} {tuple(student.shape)}, teacher {what} {tuple(teacher.shape)}; "
            "pass both models' features for the same batch"
        )
    if student.shape[0] == 0:
        raise ValueError("empty batch: a distillation loss of zero samples is undefined")
    if same_shape and student.shape != teacher.shape:
        raise ValueError(
            f"student {what} {tuple(student.shape)} and teacher {what} {tuple(teacher.shape)} differ in shape; "
            "map the student's features to the teacher's shape first (an adapter: kdlib.distiller.make_adapter)"
        )
