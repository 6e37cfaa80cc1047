"""Training schemes built on the one training loop: self, reverse, peer, multi-teacher and sequence distillation.

* :mod:`kdlib.schemes.chain`: :func:`distill_chain`, :func:`born_again`, :func:`teacher_free_self`,
  :func:`teacher_assistant`, :func:`reversed_kd`, :func:`defective_kd`.
* :mod:`kdlib.schemes.teacher_free`: :func:`teacher_free_reg` (a virtual teacher).
* :mod:`kdlib.schemes.ensemble`: :class:`Ensemble`, :func:`multi_teacher_distill`.
* :mod:`kdlib.schemes.mutual`: :func:`mutual_learning`.
* :mod:`kdlib.schemes.sequence`: :func:`sequence_level_data` (sequence-level KD), :func:`on_policy_distill`
  (the student samples, the teacher scores), for language models.

Every classifier scheme takes any ``nn.Module`` s, checks before training that each one predicts the dataset's classes,
follows ``device=`` (or the first model's device), and returns a :class:`SchemeResult` with one row per model.
"""

from kdlib.schemes.chain import (
    born_again,
    defective_kd,
    distill_chain,
    reversed_kd,
    teacher_assistant,
    teacher_free_self,
)
from kdlib.schemes.ensemble import Ensemble, MultiTeacherTerm, multi_teacher_distill
from kdlib.schemes.mutual import MutualLearningTerm, mutual_learning
from kdlib.schemes.result import ModelResult, SchemeResult
from kdlib.schemes.sequence import (
    OnPolicySource,
    continue_sequences,
    on_policy_distill,
    prompt_tokens,
    sequence_level_data,
)
from kdlib.schemes.teacher_free import VirtualTeacherTerm, teacher_free_reg

__all__ = [
    "Ensemble", "ModelResult", "MultiTeacherTerm", "MutualLearningTerm", "OnPolicySource", "SchemeResult",
    "VirtualTeacherTerm", "born_again", "continue_sequences", "defective_kd", "distill_chain", "multi_teacher_distill",
    "mutual_learning", "on_policy_distill", "prompt_tokens", "reversed_kd", "sequence_level_data", "teacher_assistant",
    "teacher_free_reg", "teacher_free_self",
]
