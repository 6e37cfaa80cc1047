"""kdlib: knowledge distillation, pruning and quantization in PyTorch, CPU-first and tested.

Modules: :mod:`kdlib.device`, :mod:`kdlib.data`, :mod:`kdlib.models`, :mod:`kdlib.features`,
:mod:`kdlib.losses`, :mod:`kdlib.train`, :mod:`kdlib.distill`, :mod:`kdlib.distiller`, :mod:`kdlib.methods`,
:mod:`kdlib.schemes`, :mod:`kdlib.augment`, :mod:`kdlib.fidelity`, :mod:`kdlib.protocol`, :mod:`kdlib.prune`, :mod:`kdlib.quantize`, :mod:`kdlib.profile`, :mod:`kdlib.repro`, :mod:`kdlib.checkpoint`,
:mod:`kdlib.plot`, :mod:`kdlib.pipeline` (and the ``kdlib`` command, :mod:`kdlib.cli`).
"""

__version__ = "0.1.0"
