"""Distil a teacher into a student on your own images, in one process, on N CPU processes or on N GPUs.

The images lie in ``ROOT/train/<class>/*.png`` and ``ROOT/val/<class>/*.png`` (torchvision's ImageFolder layout;
any format PIL reads). Random crops and flips run per image in the DataLoader's workers; images stay ``uint8``
until they reach the device, where kdlib normalizes them. The teacher is read from ``--teacher`` (a state dict),
or trained first and saved there. Every file is written by rank 0 only::

    python examples/distill_image_folder.py ROOT --out runs/folder                       # one process
    torchrun --nproc_per_node 2 examples/distill_image_folder.py ROOT --out runs/folder  # 2 CPU processes (gloo)
    torchrun --nproc_per_node 8 examples/distill_image_folder.py ROOT --out runs/folder  # 8 GPUs (NCCL)

``--batch-size`` is per process: N processes train on batches of N × batch-size samples. The student's run
checkpoints every epoch and resumes (``--resume``) where it stopped. ``RESULT.json`` in ``--out`` records the
accuracies, the time and the number of processes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from kdlib import distributed, models
from kdlib.distill import distill
from kdlib.sources import Normalize, TorchData
from kdlib.train import fit

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def folder_data(root: Path, size: int, batch_size: int, workers: int, mean, std) -> TorchData:
    """ImageFolder train/val splits: per-image random crop and flip in the workers, uint8 normalized on the device."""
    train_transform = v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True),
                                  v2.RandomCrop(size, padding=size // 14), v2.RandomHorizontalFlip()])
    val_transform = v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True)])
    train = ImageFolder(root / "train", transform=train_transform)
    val = ImageFolder(root / "val", transform=val_transform)
    if val.classes != train.classes:
        raise SystemExit(f"{root}/val has classes {val.classes}, {root}/train has {train.classes}; they must match")
    loader = dict(num_workers=workers, persistent_workers=workers > 0)
    return TorchData(DataLoader(train, batch_size=batch_size, **loader),
                     DataLoader(val, batch_size=256, **loader),
                     device_transform=Normalize(mean, std))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder with train/ and val/ ImageFolder splits")
    parser.add_argument("--out", type=Path, required=True, help="where the student, its checkpoint and RESULT.json go")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher state dict (trained and saved if missing)")
    parser.add_argument("--teacher-model", default="cnn", help="kdlib model name of the teacher")
    parser.add_argument("--student-model", default="lenet5", help="kdlib model name of the student")
    parser.add_argument("--size", type=int, default=28, help="image side after resizing")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per training process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN)
    parser.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD)
    parser.add_argument("--resume", action="store_true", help="continue the student's run from its checkpoint")
    args = parser.parse_args()

    device = distributed.setup()  # joins torchrun's process group, if any, and picks this rank's GPU
    data = folder_data(args.root, args.size, args.batch_size, args.workers, args.mean, args.std)
    classes = len(data.train.dataset.classes)
    shape = dict(in_channels=3, input_size=args.size)
    common = dict(lr=args.lr, seed=args.seed, device=device, desc="student")
    args.out.mkdir(parents=True, exist_ok=True)

    teacher_path = args.teacher or args.out / "teacher.pt"
    teacher = models.create(args.teacher_model, classes, seed=args.seed, **shape)
    if teacher_path.exists():
        teacher.load_state_dict(torch.load(teacher_path, map_location="cpu", weights_only=True))
    else:
        fit(teacher, data, epochs=args.teacher_epochs, **{**common, "desc": "teacher"})
        if distributed.is_main():
            torch.save(teacher.state_dict(), teacher_path)

    student = models.create(args.student_model, classes, seed=args.seed, **shape)
    start = time.perf_counter()
    result = distill(student, teacher, data, epochs=args.epochs, checkpoint=args.out / "student.ckpt",
                     resume=args.resume, **common)
    if distributed.is_main():
        torch.save(student.state_dict(), args.out / "student.pt")
        record = {"student_accuracy": result.final_accuracy, "train_seconds": result.train_seconds,
                  "wall_seconds": time.perf_counter() - start, "processes": distributed.world_size(),
                  "batch_per_process": args.batch_size, "steps": result.steps, "device": str(device),
                  "history": result.history}
        (args.out / "RESULT.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"student {result.final_accuracy:.4f} after {result.steps} steps on {distributed.world_size()} "
              f"process(es), {result.train_seconds:.1f} s")
    distributed.cleanup()


if __name__ == "__main__":
    main()
