"""BatchNorm recalibration after pruning: the functions live in :mod:`kdlib.batchnorm` (training uses them too)."""

from kdlib.batchnorm import batchnorm_layers, recalibrate_batchnorm  # noqa: F401
