# Build the book and run the tests. Two commands do everything on a fresh machine:
#
#   make book    create .venv, get the data, execute the chapters, write the HTML to _build/html
#   make test    create .venv, get the data, run the whole test suite (pytest's exit code)
#
# Also: make notebooks (re-execute notebooks/*.ipynb in place and stamp them), make clean, make distclean.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.kdlib-installed
NOTEBOOKS ?= $(wildcard notebooks/*.ipynb)
FASHION_MNIST := /usr/share/datasets/fashion-mnist
# The reST sources of the Python documentation (Debian's python3-doc): the language-model chapter's corpus.
PYTHON_DOCS := /usr/share/doc/python3*/html/_sources
FASHION_FILES := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz
# Seconds 'make data' and 'make browser' wait for another apt/dpkg process to release its lock.
APT_LOCK_WAIT ?= 600
# apt-get that waits for another apt/dpkg process's lock instead of failing at once.
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=$(APT_LOCK_WAIT)
# MathJax, served with the book so that its mathematics is typeset offline (tools/get_mathjax.py).
MATHJAX := book/_static/mathjax/VERSION

# For every command below and the notebook kernels they start: no progress bars, and Jupyter looks up the
# `python3` kernel in .venv before any user-wide one. Notebook kernels get matplotlib's inline backend (so
# figures are recorded); plain Python (the tests) gets Agg, which needs no display.
export KDLIB_PROGRESS := 0
export JUPYTER_PREFER_ENV_PATH := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
INLINE := module://matplotlib_inline.backend_inline

.PHONY: book test notebooks data browser clean distclean help $(VENV)
.DEFAULT_GOAL := help

help:
	@echo "make book       build the HTML book in _build/html (executes every chapter)"
	@echo "make test       run the test suite"
	@echo "make notebooks  re-execute notebooks/*.ipynb in place and stamp them (NOTEBOOKS=... for some)"
	@echo "make browser    install Chromium for the browser test (Debian, as root)"
	@echo "make clean      remove build outputs; make distclean also removes $(VENV) and MathJax"

# The environment: rebuilt when requirements.txt or pyproject.toml change. The `python3` kernel that
# papermill, nbval and Jupyter Book start is installed into the venv itself; nothing is registered globally.
$(VENV): $(INSTALLED)

$(INSTALLED): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu install python3-venv, or set PYTHON=..."; exit 1; }
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install -e . --no-deps
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (kdlib)"
	@touch $@

# Fashion-MNIST (Debian's dataset-fashion-mnist) and the Python documentation's text, the language-model corpus
# (Debian's python3-doc), installed when we can; otherwise kdlib finds Fashion-MNIST under $$KDLIB_DATA or
# ~/.cache/kdlib, or downloads it with torchvision, and the text chapters say what to install. Never fails the build.
data:
	@missing=""; for f in $(FASHION_FILES); do test -f $(FASHION_MNIST)/$$f || missing="dataset-fashion-mnist"; done; \
	ls -d $(PYTHON_DOCS) >/dev/null 2>&1 || missing="$$missing python3-doc"; \
	if [ -z "$$missing" ]; then \
	  echo "data: Fashion-MNIST found in $(FASHION_MNIST), the Python documentation in $(PYTHON_DOCS)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "data: installing$$missing (apt-get; waits up to $(APT_LOCK_WAIT) s for apt's lock)"; \
	  { $(APT_GET) update -qq && $(APT_GET) install -y -qq $$missing >/dev/null; } \
	    || { echo "data: note: apt-get could not install$$missing. If another apt or dpkg process holds its lock,"; \
	         echo "      let it finish (or set APT_LOCK_WAIT=... seconds) and run 'make data' again. Until then kdlib"; \
	         echo "      downloads Fashion-MNIST through torchvision where the network allows, and the tests that need"; \
	         echo "      the missing data fail."; }; \
	else \
	  echo "data: note:$$missing not installed; run 'make data' as root on Debian (apt-get install$$missing);"; \
	  echo "      kdlib looks for Fashion-MNIST in \$$KDLIB_DATA and ~/.cache/kdlib, or downloads it when allowed"; \
	fi

# Chromium for the browser test (tests/test_book_browser.py), from Debian's package when we can install it;
# without it that test is skipped with a message. This step never fails the build.
browser:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$CHROMIUM" ]; then \
	  echo "browser: Chromium found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "browser: installing Chromium for the browser test (apt-get install chromium)"; \
	  { $(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends chromium >/dev/null; } \
	    || echo "browser: note: apt-get could not install chromium; the browser test will be skipped (run 'make browser' again)"; \
	else \
	  echo "browser: note: Chromium not found; the browser test will be skipped. Install Debian's 'chromium' package"; \
	  echo "         (run 'make browser' as root) or set CHROMIUM=/path/to/chromium"; \
	fi

$(MATHJAX): tools/get_mathjax.py
	$(PYTHON) tools/get_mathjax.py

# Jupyter Book executes every chapter at its default parameters (execute settings in _config.yml: cache
# mode, 1800 s per cell, a failing cell fails the build) and treats every warning as an error.
book: $(VENV) data $(MATHJAX)
	MPLBACKEND=$(INLINE) $(VENV)/bin/jupyter-book build . -W --keep-going

test: $(VENV) data browser $(MATHJAX)
	MPLBACKEND=Agg $(PY) -m pytest tests -q

notebooks: $(VENV) data
	$(PY) tools/execute_notebooks.py $(NOTEBOOKS)

clean:
	rm -rf _build .jupyter_cache .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d \( -name __pycache__ -o -name .ipynb_checkpoints \) -print \
	  | xargs rm -rf

distclean: clean
	rm -rf $(VENV) *.egg-info book/_static/mathjax
