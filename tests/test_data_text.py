"""The text data of the language-model chapter: the character vocabulary, the Python documentation corpus,
windows for language modelling and the addition task."""

from __future__ import annotations

import pytest
import torch

from kdlib.data import UNLABELED
from kdlib.data.text import (
    CharVocabulary,
    Document,
    addition,
    addition_text,
    clean_rest,
    python_docs,
    text_windows,
)

REST = """.. _tut-lists:

Lists
=====

The :class:`list` type has a method :meth:`list.append` (see :ref:`the tutorial <tut-intro>`)::

    >>> a = [1]

.. note::
   :noindex:

Use ``len(a)`` to count.
"""


def test_the_vocabulary_round_trips_ascii_and_marks_the_rest():
    vocab = CharVocabulary()
    assert len(vocab) == 96
    text = "def f(x):\n    return x ~ 1"
    assert vocab.decode(vocab.encode(text)) == text
    assert vocab.decode(vocab.encode("café")) == "caf?"
    with pytest.raises(ValueError, match="token ids"):
        vocab.decode([96])


def test_rest_markup_is_removed_and_the_prose_and_code_stay():
    text = clean_rest(REST)
    assert "Lists" in text and "=====" not in text and ".. " not in text and ":noindex:" not in text
    assert "The list type has a method list.append (see the tutorial)::" in text
    assert ">>> a = [1]" in text and "Use len(a) to count." in text


def test_python_docs_reads_every_source_file(tmp_path):
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "os.rst.txt").write_text(REST)
    (tmp_path / "index.rst.txt").write_text("Welcome\n=======\n\nHello.\n")
    (tmp_path / "ignored.html").write_text("<p>no</p>")
    docs = python_docs(tmp_path)
    assert [d.name for d in docs] == ["index.rst.txt", "library/os.rst.txt"]
    assert docs[0].text == "Welcome\n\nHello.\n"
    with pytest.raises(FileNotFoundError, match="not a folder"):
        python_docs(tmp_path / "library" / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*\.rst\.txt"):
        python_docs(tmp_path / "empty")


def test_text_windows_predict_the_next_character_and_keep_documents_apart():
    docs = [Document(f"d{i}", f"document {i} " * 40 + f"<{i}>") for i in range(20)]
    data = text_windows(docs, 16, test_fraction=0.2, validation_fraction=0.2)
    val = text_windows(docs, 16, test_fraction=0.2, validation_fraction=0.2, evaluate_on="validation")
    assert data.train.x.shape[1] == 16 and torch.equal(data.train.x[:, 1:], data.train.y[:, :-1])
    assert torch.equal(data.train.x, val.train.x) and val.name == "text (validation)"
    vocab = CharVocabulary()

    def names(split):
        text = "".join(vocab.decode(row) for row in split.x) + vocab.decode(split.y[-1, -1:])
        return {i for i in range(20) if f"<{i}>" in text or f"document {i} " in text}

    train, test, validation = names(data.train), names(data.test), names(val.test)
    assert not (train & test) and not (train & validation) and not (test & validation)
    assert len(test) == len(validation) == 4
    with pytest.raises(ValueError, match="evaluate_on"):
        text_windows(docs, 16, evaluate_on="train")
    small = text_windows(docs, 16, max_train_windows=5, max_eval_windows=3)
    assert len(small.train) == 5 and len(small.test) == 3


def test_addition_writes_the_sum_least_significant_digit_first():
    assert addition_text(482, 359, 3) == ("482+359=", "1480")
    assert addition_text(7, 5, 2) == ("07+05=", "210")
    data = addition(300, 50, digits=3)
    vocab = CharVocabulary()
    for x, y in zip(data.train.x[:20], data.train.y[:20]):
        text = vocab.decode(torch.cat([x, y[-1:]]))
        a, b = int(text[:3]), int(text[4:7])
        assert text[7] == "=" and int(text[8:][::-1]) == a + b
        assert torch.equal(y[:7], torch.full((7,), UNLABELED)) and bool((y[7:] != UNLABELED).all())


def test_the_addition_splits_are_disjoint_and_the_test_set_does_not_depend_on_the_seed():
    def rows(split):
        return {tuple(r) for r in split.x.tolist()}

    a, b = addition(500, 100, seed=0), addition(500, 100, seed=1)
    val = addition(500, 100, evaluate_on="validation")
    assert rows(a.test) == rows(b.test) and rows(a.train) != rows(b.train)
    assert not (rows(a.train) & rows(a.test)) and not (rows(val.train) & rows(val.test))
    assert not (rows(a.test) & rows(val.test))
    with pytest.raises(ValueError, match="too many"):
        addition(40, 20, digits=1)
