"""Pruning: unstructured magnitude/random masks, schedules, lottery tickets, sensitivity, storage, and
structured (channel) pruning that physically shrinks the model (:mod:`kdlib.prune.structured`, Torch-Pruning),
and BatchNorm recalibration after pruning (:mod:`kdlib.batchnorm`).

Masks are :mod:`torch.nn.utils.prune` masks, and every fine-tune runs through :func:`kdlib.train.fit` or
:func:`kdlib.distill.distill`.
"""

from kdlib.batchnorm import batchnorm_layers, recalibrate_batchnorm
from kdlib.prune.analysis import pick_sparsities, plot_sensitivity, sensitivity
from kdlib.prune.lottery import lottery_ticket, rewind, save_rewind_point
from kdlib.prune.plan import apply_plan, load_pruned, save_pruned
from kdlib.prune.schedules import (
    agp_sparsity,
    fine_tune,
    gradual,
    iterative,
    one_shot,
    overall_sparsity,
    round_sparsities,
)
from kdlib.prune.storage import (
    decode_sparse,
    dense_state_dict,
    encode_sparse,
    storage_sizes,
)
from kdlib.prune.structured import (
    PruneResult,
    channels,
    prune_channels,
    prune_conv_chain_l1,
)
from kdlib.prune.unstructured import (
    PRUNABLE_TYPES,
    check_sparsity,
    copy_model,
    is_pruned,
    make_permanent,
    prunable_layers,
    prune_global,
    prune_layerwise,
    prune_random,
    sparsity_report,
)

__all__ = [
    "PRUNABLE_TYPES",
    "PruneResult",
    "agp_sparsity",
    "apply_plan",
    "batchnorm_layers",
    "channels",
    "check_sparsity",
    "copy_model",
    "decode_sparse",
    "dense_state_dict",
    "encode_sparse",
    "fine_tune",
    "gradual",
    "is_pruned",
    "iterative",
    "load_pruned",
    "lottery_ticket",
    "make_permanent",
    "one_shot",
    "overall_sparsity",
    "pick_sparsities",
    "plot_sensitivity",
    "prunable_layers",
    "prune_channels",
    "prune_conv_chain_l1",
    "prune_global",
    "prune_layerwise",
    "prune_random",
    "recalibrate_batchnorm",
    "rewind",
    "round_sparsities",
    "save_pruned",
    "save_rewind_point",
    "sensitivity",
    "sparsity_report",
    "storage_sizes",
]
