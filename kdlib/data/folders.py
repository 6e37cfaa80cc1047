"""Writing a split as image files in torchvision's ImageFolder layout: ``root/<class>/<index>.png``.

The book uses it to stand in for a reader's own folder of images; it is also a quick way to look at a data set
with an image viewer, or to hand it to a tool that reads folders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from kdlib.data.tensors import Split

__all__ = ["write_image_folder"]


def write_image_folder(
    split: Split,
    root: str | os.PathLike[str],
    classes: Sequence[str],
    *,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
) -> list[Path]:
    """Write every image of ``split`` as a PNG file ``root/<class name>/<index>.png`` and return the paths.

    Float inputs are un-normalized with ``x * std + mean`` (the dataset's constants) and rounded to 8 bits; uint8
    inputs are written as they are. A ``/`` in a class name (Fashion-MNIST's "T-shirt/top") becomes ``-``.
    """
    if split.x.dim() != 4 or split.x.shape[1] not in (1, 3):
        raise ValueError(f"write_image_folder needs images (N, 1 or 3, H, W), got {tuple(split.x.shape)}")
    if len(classes) <= int(split.y.max()):
        raise ValueError(f"labels go up to {int(split.y.max())} but only {len(classes)} class names were given")
    from PIL import Image  # a dependency of torchvision

    root = Path(root)
    x = split.x.cpu()
    if x.is_floating_point():
        shape = (1, -1, 1, 1)
        x = (x * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)).clamp(0, 1).mul(255).round()
    pixels = x.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    paths = []
    for i, (image, label) in enumerate(zip(pixels, split.y.tolist())):
        folder = root / classes[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.png"
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
        paths.append(path)
    return paths
