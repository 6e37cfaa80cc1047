"""Training on any PyTorch dataset or DataLoader: per-sample transforms, the teacher on the same batch, teacher caches
(memory, disk, top-k), uint8 images normalized on the device, and clear errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from torchvision.transforms import v2

from kdlib.data import Dataset, Split
from kdlib.distill import distill
from kdlib.distiller import Distiller, LogitTerm
from kdlib.losses import kd_loss
from kdlib.sources import Normalize, TorchData, as_source
from kdlib.teacher import TeacherCache, expand_topk, topk_log_probs
from kdlib.train import evaluate, fit

CLASSES = 4


def images(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    x[torch.arange(n), 0, y * 2, :] += 0.7  # the class is a bright row: learnable, and a flip keeps it
    return (x * 255).to(torch.uint8), y


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, CLASSES))


class Flipped(torch.utils.data.Dataset):
    """uint8 images with torchvision's v2 random horizontal flip applied per sample (in the loader's workers)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform=None) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i]
        return (self.transform(x) if self.transform else x), int(self.y[i])


NORMALIZE = Normalize(mean=(0.3,), std=(0.3,))


def test_fit_trains_on_a_dataloader_with_per_sample_v2_transforms_and_evaluates():
    x, y = images()
    train = DataLoader(Flipped(x, y, v2.RandomHorizontalFlip()), batch_size=16)
    test = DataLoader(Flipped(x, y), batch_size=50)
    model = cnn()
    result = fit(model, TorchData(train, test, num_classes=CLASSES, device_transform=NORMALIZE), epochs=4, lr=1e-2)
    assert result.config["batch_size"] == 16 and result.steps == 16
    assert result.final_accuracy > 0.9
    direct = evaluate(model, TorchData(test, test, device_transform=NORMALIZE))
    assert direct["n"] == 64 and direct["accuracy"] == pytest.approx(result.final_accuracy)


def test_per_sample_flips_differ_within_a_batch_and_the_teacher_sees_the_student_batch():
    x, y = images()
    data = TorchData(DataLoader(Flipped(x, y, v2.RandomHorizontalFlip()), batch_size=32), num_classes=CLASSES,
                     device_transform=NORMALIZE)
    seen_by_student, seen_by_teacher = [], []

    class Spy(nn.Module):
        def __init__(self, inner, log):
            super().__init__()
            self.inner, self.log = inner, log

        def forward(self, inputs):
            self.log.append(inputs.detach().clone())
            return self.inner(inputs)

    teacher, student = Spy(cnn(1), seen_by_teacher), Spy(cnn(2), seen_by_student)
    distill(student, teacher, data, epochs=1, fidelity=False)
    train_batches = [b for b in seen_by_student if b.shape[0] == 32]  # the checks run on 2- and 4-sample probes
    teacher_batches = [b for b in seen_by_teacher if b.shape[0] == 32]
    assert len(train_batches) == len(teacher_batches) == 2
    for s, t in zip(train_batches, teacher_batches):
        assert torch.equal(s, t)
    # per sample, not per batch: some samples of one batch were flipped and others not
    originals = NORMALIZE(x)
    flipped = [any(torch.equal(b[i], originals[j].flip(-1)) and not torch.equal(b[i], originals[j])
                   for j in range(64)) for b in train_batches for i in range(32)]
    assert 0 < sum(flipped) < len(flipped)


def test_random_transforms_refuse_the_cache_and_run_the_teacher_live_by_default():
    x, y = images()
    random = TorchData(Flipped(x, y, v2.RandomHorizontalFlip()), num_classes=CLASSES, device_transform=NORMALIZE)
    with pytest.raises(ValueError, match="different inputs on two reads"):
        distill(cnn(2), cnn(1), random, epochs=1, cache_teacher=True)
    result = distill(cnn(2), cnn(1), random, epochs=1, batch_size=16)
    assert result.config["cached_teacher"] is False


def test_a_cached_teacher_on_a_static_torch_dataset_equals_the_live_one():
    x, y = images()
    data = TorchData(Flipped(x, y), num_classes=CLASSES, device_transform=NORMALIZE)
    live, cached = cnn(2), cnn(2)
    distill(live, cnn(1), data, epochs=2, batch_size=16, cache_teacher=False)
    result = distill(cached, cnn(1), data, epochs=2, batch_size=16, cache_teacher=True)
    assert result.config["cached_teacher"] is True
    for p, q in zip(live.parameters(), cached.parameters()):
        torch.testing.assert_close(p, q)


def tensor_data() -> Dataset:
    x, y = images(96)
    xf = NORMALIZE(x)
    return Dataset("toy", Split(xf[:64], y[:64]), Split(xf[64:], y[64:]), CLASSES)


def test_a_disk_cache_is_reused_and_rebuilt_when_the_teacher_changes(tmp_path):
    data, teacher = tensor_data(), cnn(1)
    memory, disk = cnn(2), cnn(2)
    distill(memory, teacher, data, epochs=1, cache_teacher=True)
    cache = TeacherCache(tmp_path / "cache")
    distill(disk, teacher, data, epochs=1, cache_teacher=cache)
    assert not cache.reused and (tmp_path / "cache" / "values.npy").exists()
    for p, q in zip(memory.parameters(), disk.parameters()):
        torch.testing.assert_close(p, q)
    again = TeacherCache(tmp_path / "cache")
    distill(cnn(2), teacher, data, epochs=1, cache_teacher=again)
    assert again.reused
    other = TeacherCache(tmp_path / "cache")
    distill(cnn(2), cnn(7), data, epochs=1, cache_teacher=other)
    assert not other.reused  # another teacher: rebuilt


def test_topk_cache_keeps_the_top_probabilities_and_the_remaining_mass():
    logits = torch.randn(5, 10) * 3
    values, index = topk_log_probs(logits, 3)
    full = expand_topk(values, index, 10)
    p, q = logits.softmax(1), full.exp()
    torch.testing.assert_close(q.sum(1), torch.ones(5))
    torch.testing.assert_close(q.gather(1, index), p.gather(1, index))
    rest = torch.ones_like(p, dtype=torch.bool).scatter_(1, index, False)
    torch.testing.assert_close(q[rest].view(5, 7).sum(1), p[rest].view(5, 7).sum(1))
    torch.testing.assert_close(expand_topk(*topk_log_probs(logits, 10), 10), logits.log_softmax(1))


def test_topk_disk_cache_trains(tmp_path):
    data = tensor_data()
    result = distill(cnn(2), cnn(1), data, epochs=1, cache_teacher=TeacherCache(tmp_path, top_k=2, dtype=torch.float16))
    assert result.config["cached_teacher"] and result.final_accuracy >= 0
    assert TeacherCache.megabytes(1000, 50_000, top_k=20, dtype=torch.float16) < TeacherCache.megabytes(1000, 50_000) / 100


def test_loader_errors_say_what_to_do():
    x, y = images()

    class Stream(IterableDataset):
        def __iter__(self):
            return iter([(x[0], 0)])

    with pytest.raises(TypeError, match="map-style"):
        fit(cnn(), DataLoader(Stream()), epochs=1)
    with pytest.raises(ValueError, match="batch_size=8 but the DataLoader has batch_size=16"):
        fit(cnn(), DataLoader(Flipped(x, y), batch_size=16), epochs=1, batch_size=8)
    with pytest.raises(TypeError, match="must be a kdlib.data.Dataset, a torch Dataset or DataLoader"):
        fit(cnn(), [(x[0], 0)], epochs=1)
    bad_labels = TorchData(Flipped(x, y + 10), num_classes=CLASSES, device_transform=NORMALIZE)
    with pytest.raises(ValueError, match="labels of Flipped lie outside"):
        fit(cnn(), bad_labels, epochs=1)
    with pytest.raises(TypeError, match=r"\(input, label\) pairs"):
        fit(cnn(), TensorDataset(x.float()), epochs=1)


def test_without_eval_data_the_history_has_no_test_keys():
    x, y = images()
    result = fit(cnn(), TorchData(Flipped(x, y), num_classes=CLASSES, device_transform=NORMALIZE), epochs=1)
    assert "test_accuracy" not in result.history[-1] and result.final_accuracy != result.final_accuracy  # NaN


def test_resume_refuses_another_teacher(tmp_path):
    from kdlib.run_state import ResumeMismatchError

    data = tensor_data()
    distill(cnn(2), cnn(1), data, epochs=1, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ResumeMismatchError, match="frozen_models"):
        distill(cnn(2), cnn(5), data, epochs=1, checkpoint=tmp_path / "c.pt", resume=True)


def test_batchnorm_collapse_warns_and_recalibration_fixes_it():
    # inputs far from zero and a BatchNorm whose running mean hardly moves (momentum 0.001): at test time the layer
    # sees activations about 20x larger than its statistics say
    base = tensor_data()
    data = Dataset("offset", Split(base.train.x + 20, base.train.y), Split(base.test.x + 20, base.test.y), CLASSES)

    def bn_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32, momentum=0.001), nn.ReLU(),
                             nn.Linear(32, CLASSES))

    with pytest.warns(RuntimeWarning, match="running statistics may not describe"):
        collapsed = fit(bn_model(), data, epochs=10, lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fixed = fit(bn_model(), data, epochs=10, lr=1e-2, recalibrate_bn=True)
    assert collapsed.final_accuracy < 0.5 and fixed.final_accuracy > 0.9


def test_as_source_accepts_each_kind_of_data():
    data = tensor_data()
    assert as_source(data).num_train == 64
    assert as_source(data, data.test).eval_split is data.test
    assert as_source(TensorDataset(data.train.x, data.train.y)).num_classes is None
    with pytest.raises(TypeError, match="eval_data for a kdlib Dataset must be a kdlib.data.Split"):
        as_source(data, TensorDataset(data.test.x, data.test.y))
    kd = LogitTerm(kd_loss, weight=1.0, temperature=2.0)
    Distiller(cnn(2), cnn(1), [kd]).fit(TensorDataset(data.train.x, data.train.y),
                                        eval_data=TensorDataset(data.test.x, data.test.y), epochs=1)


def test_uint8_storage_trains_the_same_model_as_float32():
    x, y = images(96)
    stats = dict(mean=(0.3,), std=(0.3,))
    as_bytes = Dataset("bytes", Split(x[:64], y[:64], **stats), Split(x[64:], y[64:], **stats), CLASSES)
    as_floats = Dataset("floats", Split(NORMALIZE(x[:64]), y[:64]), Split(NORMALIZE(x[64:]), y[64:]), CLASSES)
    a, b = cnn(), cnn()
    ra = fit(a, as_bytes, epochs=2, batch_size=16)
    rb = fit(b, as_floats, epochs=2, batch_size=16)
    assert as_bytes.train.x.element_size() == 1 and ra.final_accuracy == rb.final_accuracy
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_write_image_folder_round_trips_through_image_folder(tmp_path):
    from torchvision.datasets import ImageFolder

    from kdlib.data import write_image_folder

    x, y = images(12)
    write_image_folder(Split(x, y, mean=(0.3,), std=(0.3,)), tmp_path, ["a", "b/c", "d", "e"])
    folder = ImageFolder(tmp_path, transform=v2.ToImage())
    assert folder.classes == sorted({"a", "b-c", "d", "e"} & {p.name for p in tmp_path.iterdir()})
    back = sorted((int(p.stem), p.parent.name) for p in tmp_path.glob("*/*.png"))
    assert [i for i, _ in back] == list(range(12))
    first = folder[0]
    assert first[0].dtype == torch.uint8 and first[0].shape == (3, 8, 8)


def test_torch_data_reaches_methods_schemes_pruning_and_quantization():
    from kdlib.features import FeatureRecorder
    from kdlib.methods import distill_with
    from kdlib.prune import recalibrate_batchnorm
    from kdlib.quantize.fake import calibration_batches
    from kdlib.schemes import mutual_learning

    data = tensor_data()
    train, test = TensorDataset(data.train.x, data.train.y), TensorDataset(data.test.x, data.test.y)
    result = distill_with("kd", cnn(2), cnn(1), train, eval_data=test, epochs=1)
    assert 0 <= result.final_accuracy <= 1
    peers = mutual_learning([cnn(3), cnn(4)], TorchData(train, test), epochs=1)
    assert {row.name for row in peers.rows} >= {"peer 0", "peer 1"}
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, CLASSES))
    recalibrate_batchnorm(bn, DataLoader(train, batch_size=8), batches=2, batch_size=8)
    assert int(bn[1].num_batches_tracked) == 2
    assert [b.shape[0] for b in calibration_batches(train, 3, 10)] == [10, 10, 10]
    # a feature name copied from a DDP-wrapped model ("module.0") records the plain model's layer, and back
    model = cnn()
    with FeatureRecorder(model, ["module.0"]) as rec:
        model(data.train.x[:2])
        assert rec.features["module.0"].shape == (2, 4, 8, 8)
