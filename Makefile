# Both targets set themselves up from a fresh clone: a .venv with the package and its extras.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m flamingo_jax.demo --config=configs/demo.py

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 tests
