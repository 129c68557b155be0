# The README's two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Pinned CPU-friendly torch pair; pyproject.toml keeps broad ranges for users.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,demo]' $(TORCH)
	touch $@

demo: setup
	HF_HUB_OFFLINE=1 $(PY) scripts/demo.py

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/engine.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
