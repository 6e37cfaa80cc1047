"""Train-time augmentation on the device, applied to whole batches of normalized float inputs at once:
random crops and flips of images (:class:`RandomCropFlip`) and random shifts of 1-D signals
(:class:`RandomShift`). Combinations and input mixing live in :mod:`kdlib.augment`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Augment", "RandomCropFlip", "RandomShift", "random_crop_flip", "random_shift"]

#: An augmentation: called as ``augment(x, generator)`` on a batch of inputs, returns the augmented batch.
Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Random numbers drawn on the CPU (the same for a seed on every device), sent to ``device`` without waiting.

    A plain ``.to("cuda")`` of a CPU tensor waits for every kernel queued before it; from pinned memory the copy is
    queued like a kernel, so drawing an augmentation never stalls the GPU.
    """
    if values.device == device:
        return values
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


def random_crop_flip(
    x: torch.Tensor,
    *,
    padding: int,
    flip: bool,
    fill: float | Sequence[float] = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Randomly crop (after padding) and optionally mirror each image of a batch, all at once on its device.

    Each image is padded by ``padding`` pixels of value ``fill`` on every side and a window of the original
    size is cut at a random offset in ``[0, 2 * padding]`` per axis; with ``flip`` each image is mirrored
    left-right with probability 1/2. The random numbers come from ``generator`` (on its device, CPU by
    default), first the offsets ``(N, 2)`` and then the flips ``(N,)``, so a seeded generator gives the same
    batch on every device.

    Args:
        x: images ``(N, C, H, W)``, floating point.
        padding: pixels added on each side (0 disables cropping).
        flip: whether to mirror images at random.
        fill: value of padded pixels, one per channel or one for all. For normalized inputs pass the value
            that a black pixel has after normalization, ``-mean / std``, as torchvision's ``RandomCrop``
            pads before normalizing.
        generator: random source; ``None`` uses torch's global generator.

    Returns:
        A new tensor of the same shape, dtype and device as ``x``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"random_crop_flip needs a floating-point batch of images (N, C, H, W), got {shape}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    n, c, h, w = x.shape
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1)
    if fill_t.numel() not in (1, c):
        raise ValueError(f"fill has {fill_t.numel()} values; give one, or one per channel ({c})")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    offsets = to_device(torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=gen_device), x.device)
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (N, H) rows of the padded image
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # (N, W)
    if flip:
        mirrored = to_device(torch.rand(n, generator=generator, device=gen_device) < 0.5, x.device)
        # Mirroring the crop is reading its columns backwards, so crop and flip are one gather.
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    if padding:
        padded = fill_t.reshape(1, -1, 1, 1).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
        padded[:, :, padding : padding + h, padding : padding + w] = x
    else:
        padded = x
    sample = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices split by a slice put their broadcast dims first: the result is (N, H, W, C).
    out = padded[sample, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class RandomCropFlip:
    """Train-time augmentation for image batches: :func:`random_crop_flip` with fixed settings.

    Use as ``Dataset.augment``; :func:`batches` calls it as ``augment(x, generator)``.

    Attributes:
        padding: pixels of padding before the random crop (0: no crop).
        flip: mirror images left-right at random.
        fill: value of padded pixels per channel (a normalized black pixel, ``-mean / std``).
    """

    padding: int
    flip: bool
    fill: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        if isinstance(self.padding, bool) or not isinstance(self.padding, int) or self.padding < 0:
            raise ValueError(f"padding must be an int >= 0, got {self.padding!r}")
        if not isinstance(self.flip, bool):
            raise TypeError(f"flip must be a bool, got {type(self.flip).__name__}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_crop_flip(x, padding=self.padding, flip=self.flip, fill=self.fill, generator=generator)


def random_shift(x: torch.Tensor, *, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each 1-D signal of a batch by a random whole number of steps in ``[-max_shift, max_shift]``.

    Positions shifted in from outside are filled with 0 (the data's mean after normalization). For MNIST-1D
    this is label-preserving: its generator already places each pattern at a random offset. One gather,
    no Python loop over samples; the shifts come from ``generator`` (CPU by default).

    Args:
        x: signals ``(N, L)``, floating point.
        max_shift: largest shift in either direction (0 returns a copy).
        generator: random source; ``None`` uses torch's global generator.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"random_shift needs a floating-point batch of signals (N, L), got {shape}")
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be an int >= 0, got {max_shift!r}")
    n, length = x.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    shifts = to_device(torch.randint(-max_shift, max_shift + 1, (n, 1), generator=generator, device=gen_device), x.device)
    source = torch.arange(length, device=x.device) - shifts  # (N, L): where each output position reads from
    inside = (source >= 0) & (source < length)
    return torch.gather(x, 1, source.clamp(0, length - 1)) * inside


@dataclass(frozen=True)
class RandomShift:
    """Train-time augmentation for 1-D signals: :func:`random_shift` with a fixed ``max_shift``."""

    max_shift: int

    def __post_init__(self) -> None:
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise ValueError(f"max_shift must be an int >= 0, got {self.max_shift!r}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_shift(x, max_shift=self.max_shift, generator=generator)

