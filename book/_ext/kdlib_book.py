"""Sphinx extension for the book: author-year bibliography labels, and the repository link in one place.

- Citations read "[Hinton et al., 2015]" in the text (``bibtex_reference_style: author_year``), and pybtex's
  default labels would call the same entry "[HVD15]" in the reference lists. The label style registered here
  gives the lists the text's labels, so a reader sees one style throughout.
- ``repository.url`` in ``_config.yml`` (or the environment variable ``BOOK_REPOSITORY_URL``) is the one place
  the repository's address is set. Where it is on GitHub, GitLab or Bitbucket, this extension turns on the
  repository and issue buttons (and "open in Colab" for GitHub); on any host it defines the substitution
  ``{{ get_the_code }}`` the chapters use to say where their code is and how to run it.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting.author_year_title import SortingStyle

COLAB = "https://colab.research.google.com"


def _last_names(person) -> str:
    return " ".join(Text.from_latex(name).render_as("text") for name in person.last_names) or "Anonymous"


def author_year_label(entry) -> str:
    """"Hinton et al., 2015" (three or more authors), "Ba and Caruana, 2014", "Gou, 2021" (one)."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_last_names(p) for p in people]
    if len(names) >= 3:
        who = f"{names[0]} et al."
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = names[0] if names else entry.fields.get("title", "Anonymous")
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabelStyle(BaseLabelStyle):
    """Author-year labels (two works that would share one get distinct years, see :func:`disambiguate_years`)."""

    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            yield author_year_label(entry)


class AuthorYearStyle(UnsrtStyle):
    """pybtex's unsrt entry format, sorted by author and year, labelled like the in-text citations."""

    default_label_style = AuthorYearLabelStyle
    default_sorting_style = SortingStyle


register_plugin("pybtex.style.labels", "author_year_text", AuthorYearLabelStyle)
register_plugin("pybtex.style.formatting", "author_year_text", AuthorYearStyle)


def disambiguate_years(app) -> None:
    """Give works whose labels collide distinct years ("Zhang et al., 2018a" and "2018b"), in the text too.

    Runs after sphinxcontrib-bibtex has parsed the bibliography, on its data, so that the in-text citation and
    the reference list both show the suffixed year. Suffixes follow the citation keys' alphabetical order.
    """
    entries = app.env.get_domain("cite").bibdata.data.entries
    groups: dict[str, list[str]] = {}
    for key, entry in entries.items():
        entry.fields["year"] = entry.fields["year"].rstrip("abcdefghij") if "year" in entry.fields else "n.d."
        groups.setdefault(author_year_label(entry), []).append(key)
    for keys in groups.values():
        if len(keys) > 1:
            for suffix, key in zip("abcdefghij", sorted(keys)):
                entries[key].fields["year"] += suffix


def repository_url(config) -> str:
    return os.environ.get("BOOK_REPOSITORY_URL") or config.html_theme_options.get("repository_url", "") or ""


def get_the_code(url: str) -> str:
    """The sentence every chapter's "Run this chapter yourself" box starts with."""
    where = f"the book's repository, <{url}>" if url else "the book's repository"
    return (
        f"Every chapter is a Jupyter notebook in the `notebooks/` folder of {where}. In a clone of it, "
        "`make notebooks NOTEBOOKS=notebooks/<chapter>.ipynb` installs everything in `.venv` and re-runs a chapter; "
        "`pip install -e .` installs `kdlib` into an environment of your own (see {ref}`book-setup`)."
    )


def configure(app, config) -> None:
    url = repository_url(config)
    options = dict(config.html_theme_options)
    # The theme's buttons know GitHub, GitLab and Bitbucket (and Colab opens notebooks from GitHub only); any
    # other host still gets its link in every chapter's box, without buttons.
    provider = next((name for name in ("github", "gitlab", "bitbucket") if name in urlsplit(url).netloc), None)
    if provider:
        options.update(repository_url=url, repository_provider=provider, use_repository_button=True,
                       use_issues_button=True)
        if provider == "github":
            options["launch_buttons"] = {**options.get("launch_buttons", {}), "colab_url": COLAB}
    else:
        options["repository_url"] = ""
    config.html_theme_options = options
    config.myst_substitutions = {**config.myst_substitutions, "get_the_code": get_the_code(url)}


def drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    """Include each script once per page.

    sphinx-thebe adds its inline configuration (``const THEBE_JS_URL = ...``) once per environment read, and Jupyter
    Book reads twice, so every page declared the constant twice and the browser logged a SyntaxError.
    """
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (getattr(script, "filename", script) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique  # in place: handlers that run later (MathJax's) add to the same list


def setup(app):
    app.connect("config-inited", configure)
    app.connect("builder-inited", disambiguate_years, priority=900)  # after sphinxcontrib-bibtex parsed the .bib
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
