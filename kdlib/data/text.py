"""Text for language models, offline: Python's documentation as a corpus, a character vocabulary, and an
arithmetic task with exact answers.

**The corpus.** Debian's ``python3-doc`` package (``apt-get install python3-doc``; ``make data`` does it) installs
the reStructuredText sources of the Python documentation under ``/usr/share/doc/python3.X/html/_sources``: about
500 files, 12 MB of English technical prose and code. The text is distributed under the PSF License Agreement
(https://docs.python.org/3/license.html). :func:`python_docs` reads it and strips the reST markup that is not
prose (directives, roles, section underlines).

**Tokens.** Characters: :class:`CharVocabulary` maps printable ASCII and the newline to 96 ids, any other
character to ``?``, so one vocabulary serves every text (the corpus and the arithmetic task alike) and
:meth:`~CharVocabulary.decode` shows what a model wrote.

**Data sets.** :func:`text_windows` cuts documents into windows of ``context + 1`` characters: inputs are the first
``context``, targets the next character at each position (every position scored). :func:`addition` writes sums
``"482+359="`` with the answer digits least significant first (``"148"``, a carry then flows left to right, the
order a left-to-right model writes them); only the answer positions have targets, the prompt is
:data:`~kdlib.data.UNLABELED`. Both return a :class:`~kdlib.data.Dataset` whose ``test`` split is the test or, with
``evaluate_on="validation"``, a validation split disjoint from both training and test data.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kdlib.data.tensors import UNLABELED, Dataset, Split

__all__ = ["CharVocabulary", "Document", "addition", "python_docs", "python_docs_root", "text_windows"]

PYTHON_DOCS_GLOB = "/usr/share/doc/python3*/html/_sources"
EVALUATE_ON = ("test", "validation")


class CharVocabulary:
    """Characters as token ids: ``"\\n"`` is 0, printable ASCII ``" "`` … ``"~"`` are 1 … 95; anything else is
    written as ``"?"``."""

    def __init__(self) -> None:
        self.chars = "\n" + "".join(chr(c) for c in range(32, 127))
        self._ids = {ch: i for i, ch in enumerate(self.chars)}
        self.unknown = self._ids["?"]

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (int64) of ``text``."""
        return torch.tensor([self._ids.get(ch, self.unknown) for ch in text], dtype=torch.int64)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """The text of token ids (a 1-D tensor or a list)."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in values if not 0 <= i < len(self.chars)]
        if bad:
            raise ValueError(f"token ids must lie in [0, {len(self.chars)}), got {bad[:5]}")
        return "".join(self.chars[i] for i in values)


@dataclass(frozen=True)
class Document:
    """One file of a corpus: its path relative to the corpus root, and its text."""

    name: str
    text: str


def python_docs_root() -> Path:
    """The folder of the Python documentation's reST sources installed by Debian's ``python3-doc``."""
    found = sorted(glob.glob(PYTHON_DOCS_GLOB))
    if not found:
        raise FileNotFoundError(
            f"the Python documentation sources are not installed (looked for {PYTHON_DOCS_GLOB}); install them "
            "with 'apt-get install python3-doc' (or 'make data' as root), or pass root= to a copy of a "
            "Sphinx '_sources' folder"
        )
    return Path(found[-1])


_TITLED_ROLE = re.compile(r":[\w:.+-]+:`([^`<]*?)\s*<[^`>]*>`")  # :ref:`the tutorial <tut-intro>` -> the tutorial
_ROLE = re.compile(r":[\w:.+-]+:`~?!?([^`]*)`")  # :func:`~os.path.join` -> os.path.join
_LITERAL = re.compile(r"``([^`]*)``")
_UNDERLINE = re.compile(r"^\s*([=\-~^*#+\"'`.:_])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^\s*\.\. ")
_OPTION = re.compile(r"^\s+:[\w-]+:")


def clean_rest(text: str) -> str:
    """reST to plain text: directive lines (``.. note::``, targets, comments) and their options, section
    underlines, role and literal markup are removed; the prose and code examples stay."""
    lines = []
    for line in text.replace("\t", "    ").splitlines():
        if _DIRECTIVE.match(line) or _UNDERLINE.match(line) or _OPTION.match(line):
            continue
        lines.append(_LITERAL.sub(r"\1", _ROLE.sub(r"\1", _TITLED_ROLE.sub(r"\1", line))).rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def python_docs(root: str | Path | None = None) -> list[Document]:
    """Every ``*.rst.txt`` file of the Python documentation sources, cleaned (:func:`clean_rest`), in path order.

    Args:
        root: a Sphinx ``_sources`` folder; by default the one Debian's ``python3-doc`` installs.

    The text is under the PSF License Agreement (https://docs.python.org/3/license.html).
    """
    folder = Path(root) if root is not None else python_docs_root()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of reST sources")
    files = sorted(folder.rglob("*.rst.txt"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no *.rst.txt file: is it a Sphinx '_sources' folder?")
    return [Document(str(f.relative_to(folder)), clean_rest(f.read_text(encoding="utf-8", errors="replace")))
            for f in files]


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 0.5:
        raise ValueError(f"{name} must lie in (0, 0.5), got {value!r}")


def text_windows(documents: Sequence[Document], context: int, *, vocabulary: CharVocabulary | None = None,
                 test_fraction: float = 0.1, validation_fraction: float = 0.1, evaluate_on: str = "test",
                 max_train_windows: int | None = None, max_eval_windows: int | None = None, seed: int = 0,
                 name: str = "text") -> Dataset:
    """A language-modelling data set: windows of ``context + 1`` characters cut from whole documents.

    Documents, not windows, are assigned to the training, validation and test parts (a seeded shuffle), so no
    text of one part appears in another. Each part's documents are joined with blank lines and cut into
    non-overlapping windows; ``x`` is a window's first ``context`` ids, ``y`` the ids one position later.

    Args:
        documents: the corpus (:func:`python_docs`).
        context: characters a model reads.
        test_fraction / validation_fraction: shares of the documents held out.
        evaluate_on: ``"test"`` or ``"validation"``: which held-out part becomes the ``test`` split.
        max_train_windows / max_eval_windows: keep a seeded random subset of the training / evaluated windows
            (evaluation reads the evaluated split at every ``eval_every``: keep it to what a precise mean needs).
        seed: the assignment of documents and the subset.
    """
    if evaluate_on not in EVALUATE_ON:
        raise ValueError(f"evaluate_on must be one of {EVALUATE_ON}, got {evaluate_on!r}")
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("validation_fraction", validation_fraction)
    if len(documents) < 3:
        raise ValueError(f"need at least 3 documents to hold out validation and test text, got {len(documents)}")
    vocabulary = vocabulary or CharVocabulary()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(documents), generator=generator).tolist()
    n_test = max(1, round(test_fraction * len(documents)))
    n_val = max(1, round(validation_fraction * len(documents)))
    parts = {"test": order[:n_test], "validation": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}

    def windows(indices: list[int]) -> Split:
        ids = vocabulary.encode("\n\n".join(documents[i].text for i in sorted(indices)))
        n = (ids.numel() - 1) // context
        if n < 1:
            raise ValueError(f"the documents hold fewer than {context + 1} characters")
        x = ids[: n * context].view(n, context)
        y = ids[1 : n * context + 1].view(n, context)
        return Split(x, y)

    def subset(split: Split, n: int | None) -> Split:
        if n is None or n >= len(split):
            return split
        keep = torch.randperm(len(split), generator=generator)[:n]
        return Split(split.x[keep], split.y[keep])

    train = subset(windows(parts["train"]), max_train_windows)
    held_out = subset(windows(parts[evaluate_on]), max_eval_windows)
    return Dataset(name if evaluate_on == "test" else f"{name} (validation)", train, held_out,
                   num_classes=len(vocabulary))


def _sums(n: int, digits: int, generator: torch.Generator, exclude: set[tuple[int, int]]) -> list[tuple[int, int]]:
    high = 10**digits
    pairs: list[tuple[int, int]] = []
    seen = set(exclude)
    while len(pairs) < n:
        for a, b in torch.randint(0, high, (2 * (n - len(pairs)) + 16, 2), generator=generator).tolist():
            if (a, b) not in seen and len(pairs) < n:
                seen.add((a, b))
                pairs.append((a, b))
    return pairs


def addition_text(a: int, b: int, digits: int) -> tuple[str, str]:
    """Prompt and answer of one sum: ``("482+359=", "1480")`` for 3 digits (answer reversed, ``digits + 1`` long)."""
    return f"{a:0{digits}d}+{b:0{digits}d}=", f"{a + b:0{digits + 1}d}"[::-1]


def addition(n_train: int, n_eval: int, *, digits: int = 3, evaluate_on: str = "test", seed: int = 0,
             vocabulary: CharVocabulary | None = None) -> Dataset:
    """Sums of two ``digits``-digit numbers as character sequences with one right answer each.

    A sample is ``"482+359=1480"`` (:func:`addition_text`): the model reads the prompt and writes the
    ``digits + 1`` answer digits, least significant first. Targets exist only at the answer positions. The
    training, validation and test sums are three disjoint sets (the test set is the same for every ``seed``
    given the same sizes, and never seen in training).
    """
    if evaluate_on not in EVALUATE_ON:
        raise ValueError(f"evaluate_on must be one of {EVALUATE_ON}, got {evaluate_on!r}")
    if not 1 <= digits <= 9:
        raise ValueError(f"digits must lie in [1, 9], got {digits}")
    if n_train + 2 * n_eval > 10 ** (2 * digits) // 2:
        raise ValueError(f"{n_train} + 2 x {n_eval} sums are too many for {digits}-digit numbers; use more digits")
    vocabulary = vocabulary or CharVocabulary()
    test = _sums(n_eval, digits, torch.Generator().manual_seed(10_007), set())
    validation = _sums(n_eval, digits, torch.Generator().manual_seed(20_011), set(test))
    train = _sums(n_train, digits, torch.Generator().manual_seed(seed), set(test) | set(validation))

    def split(pairs: list[tuple[int, int]]) -> Split:
        texts = [addition_text(a, b, digits) for a, b in pairs]
        ids = torch.stack([vocabulary.encode(p + a) for p, a in texts])
        x, y = ids[:, :-1], ids[:, 1:].clone()
        y[:, : len(texts[0][0]) - 1] = UNLABELED  # the prompt is read, not predicted
        return Split(x, y)

    name = f"addition-{digits}" if evaluate_on == "test" else f"addition-{digits} (validation)"
    return Dataset(name, split(train), split(test if evaluate_on == "test" else validation),
                   num_classes=len(vocabulary))
