"""The chapters' bookkeeping (kdlib.book) and the book's Sphinx extension (book/_ext/kdlib_book.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pybtex.database import parse_string

from kdlib import book

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "book" / "_ext"))
import kdlib_book  # noqa: E402


@pytest.fixture
def glued(monkeypatch):
    import myst_nb

    calls = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: calls.__setitem__(name, (value, display)))
    return calls


def test_glue_numbers_glues_plain_floats_and_strings_without_display(glued):
    book.glue_numbers("b_", seeds=3, acc=np.float32(0.5), loss=torch.tensor(1.25), cpu="AMD EPYC")
    assert glued == {"b_seeds": (3.0, False), "b_acc": (0.5, False), "b_loss": (1.25, False), "b_cpu": ("AMD EPYC", False)}
    assert all(type(value) in (float, str) for value, _ in glued.values())


@pytest.mark.parametrize("bad", [[1, 2], torch.ones(2), None])
def test_glue_numbers_refuses_what_the_prose_cannot_format(glued, bad):
    with pytest.raises(TypeError, match="x_bad"):
        book.glue_numbers("x_", bad=bad)
    assert glued == {}


def test_glue_comparison_glues_each_arm_under_an_identifier(glued):
    import pandas as pd

    table = pd.DataFrame({"mean": [85.7, 89.1], "diff": [float("nan"), 3.4], "low": [float("nan"), 0.6],
                          "high": [float("nan"), 6.1], "verdict": ["—", "n.s."]}, index=["alone", "KD, lr 1e-3"])
    book.glue_comparison("arm_", table)
    assert glued == {"arm_alone_mean": (85.7, False), "arm_KD_lr_1e_3_mean": (89.1, False),
                     "arm_KD_lr_1e_3_diff": (3.4, False), "arm_KD_lr_1e_3_low": (0.6, False),
                     "arm_KD_lr_1e_3_high": (6.1, False), "arm_KD_lr_1e_3_verdict": ("n.s.", False)}
    glued.clear()
    book.glue_comparison("abl_", table, fields=("diff",), means=False)  # the baseline ("—") gets nothing
    assert glued == {"abl_KD_lr_1e_3_diff": (3.4, False)}


def test_load_results_reads_json_and_says_how_to_get_a_missing_file(tmp_path):
    path = tmp_path / "benchmarks" / "results" / "prune_speedup.json"
    with pytest.raises(FileNotFoundError, match="clone of the book's repository.*script of the same name"):
        book.load_results(path)  # a chapter downloaded alone: no benchmarks/ folder
    path.parent.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No script in benchmarks/ writes it"):
        book.load_results(path)  # results that no script writes (numbers copied from papers)
    (path.parents[1] / "prune_speedup.py").touch()
    with pytest.raises(FileNotFoundError, match=r"python benchmarks/prune_speedup\.py"):
        book.load_results(path)
    path.write_text(json.dumps({"seeds": 3}))
    assert book.load_results(path) == {"seeds": 3}


BIB = r"""
@article{one, author = {Gou, Jianping}, title = {A}, year = {2021}}
@article{two, author = {Ba, Jimmy and Caruana, Rich}, title = {B}, year = {2014}}
@article{three, author = {Bengio, Yoshua and L{\'e}onard, Nicholas and Courville, Aaron}, title = {C}, year = {2013}}
@article{zhang2018mixup, author = {Zhang, H. and Cisse, M. and Dauphin, Y.}, title = {mixup}, year = {2018}}
@article{zhang2018deep, author = {Zhang, Ying and Xiang, Tao and Hospedales, Timothy}, title = {DML}, year = {2018}}
"""


def test_author_year_labels_match_the_in_text_style():
    entries = parse_string(BIB, "bibtex").entries
    labels = {key: kdlib_book.author_year_label(entry) for key, entry in entries.items()}
    assert labels["one"] == "Gou, 2021"
    assert labels["two"] == "Ba and Caruana, 2014"
    assert labels["three"] == "Bengio et al., 2013"  # LaTeX accents rendered, not "[BLeonardC13]"


def test_colliding_labels_get_distinct_years_once():
    entries = parse_string(BIB, "bibtex").entries
    domain = SimpleNamespace(bibdata=SimpleNamespace(data=SimpleNamespace(entries=entries)))
    app = SimpleNamespace(env=SimpleNamespace(get_domain=lambda name: domain))
    for _ in range(2):  # incremental builds run it again on the same data: no "2018aa"
        kdlib_book.disambiguate_years(app)
    assert entries["zhang2018deep"].fields["year"] == "2018a"
    assert entries["zhang2018mixup"].fields["year"] == "2018b"
    assert entries["one"].fields["year"] == "2021"


@pytest.mark.parametrize("url", ["", "https://github.com/someone/kdlib", "https://git.example.org/kdlib"])
def test_repository_url_turns_on_buttons_and_names_the_repository(monkeypatch, url):
    monkeypatch.delenv("BOOK_REPOSITORY_URL", raising=False)
    config = SimpleNamespace(html_theme_options={"repository_url": url, "launch_buttons": {"thebe": False}},
                             myst_substitutions={})
    kdlib_book.configure(None, config)
    options, text = config.html_theme_options, config.myst_substitutions["get_the_code"]
    on_github = "github.com" in url
    assert bool(options.get("use_repository_button")) == on_github  # the theme knows GitHub, GitLab, Bitbucket
    assert (options["launch_buttons"].get("colab_url") == kdlib_book.COLAB) == on_github
    assert options["repository_url"] == (url if on_github else "")
    assert (url in text) if url else ("http" not in text)  # any host is named in the chapters' boxes
    assert "make notebooks" in text and "pip install -e ." in text
