"""Distillation losses as plain functions on tensors, with small modules only where state is needed.

Every loss checks its inputs and raises one clear error instead of broadcasting silently. The families
live in their own modules and are all importable from here:

* :mod:`kdlib.losses.logit`: Hinton KD, logit matching (MSE), DKD, DIST, logit standardization.
* :mod:`kdlib.losses.feature`: FitNets hints, attention transfer.
* :mod:`kdlib.losses.relation`: similarity-preserving, RKD distance and angle, PKT.
* :mod:`kdlib.losses.contrastive`: CRD with a memory bank or a bounded queue.
* :mod:`kdlib.losses.targets`: KD from a virtual teacher (Tf-KD) and from a weighted teacher ensemble.
* :mod:`kdlib.losses.sequence`: token-level forward and reverse KL, generalized JSD and skew KL for sequence models.
* :mod:`kdlib.losses.checks`: the shared input checks.
"""

from kdlib.losses.checks import *  # noqa: F403
from kdlib.losses.contrastive import *  # noqa: F403
from kdlib.losses.feature import *  # noqa: F403
from kdlib.losses.logit import *  # noqa: F403
from kdlib.losses.relation import *  # noqa: F403
from kdlib.losses.sequence import *  # noqa: F403
from kdlib.losses.targets import *  # noqa: F403

from kdlib.losses import checks, contrastive, feature, logit, relation, sequence, targets

__all__ = [*checks.__all__, *logit.__all__, *feature.__all__, *relation.__all__, *contrastive.__all__, *targets.__all__,
           *sequence.__all__]
