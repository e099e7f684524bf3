# The two commands of the README. PYTHON may point at any interpreter; `make` alone sets up .venv.
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python

.PHONY: search test test-fast install

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PYTHON) -m pip install -q -e ".[test,onnx]"
	touch $@

install: $(VENV)/.installed

search: install
	$(VENV)/bin/nasfpn search

test: install
	$(PYTHON) -m pytest -q

test-fast: install   # without the tests that start a real Ray (about a minute)
	$(PYTHON) -m pytest -q -m "not ray"
