# The README's two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Pinned CPU-friendly torch pair; pyproject.toml keeps broad ranges for users.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: setup browser espeak demo test bench bench-gpu imagebind clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,demo]' $(TORCH)
	touch $@

demo: setup espeak
	HF_HUB_OFFLINE=1 $(PY) scripts/demo.py

# The HTML report tests drive Debian's Chromium headless; installed here when missing (CI runs as root).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# Debian's espeak-ng speaks the demo's clip sentences and the speech tests' (VAD, ASR); installed like Chromium.
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null; }

test: setup browser espeak
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# Meta's ImageBind code for the imagebind teacher (opt-in; tests/test_imagebind.py then runs its real path).
# imagebind-unofficial's own dependencies do not import here: its pytorchvideo 0.1.5 needs a module torchvision
# 0.17 removed (jj-pytorchvideo is pytorchvideo's fixed main) and its data.py needs setuptools<81's pkg_resources.
imagebind: setup
	$(PY) -m pip install -q --no-deps imagebind-unofficial==0.1.1 jj-pytorchvideo==0.1.5
	$(PY) -m pip install -q 'setuptools>=77,<81' timm ftfy regex einops fvcore iopath av decord pandas parameterized torchaudio $(TORCH)

bench: setup
	$(PY) -m pip install -q -e '.[bench]' $(TORCH)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/engine.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/teachers.py --batches 1,2 --seconds 4 --sam-points 8
	HF_HUB_OFFLINE=1 $(PY) benchmarks/tokenizer_bench.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/audit.py --sizes 100000
	HF_HUB_OFFLINE=1 $(PY) benchmarks/shards.py --samples 50000
	HF_HUB_OFFLINE=1 $(PY) benchmarks/trainer.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/trust.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/clips.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/cuts.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/scale.py
	$(PY) benchmarks/store_scale.py
	$(PY) benchmarks/tables.py --write

# One GPU, under 6 minutes (docs/GPU.md). No setup: the GPU machine has no venv and no network, only the
# wheels benchmarks/gpu_wheels.sh fetched here and carried there.
bench-gpu:
	HF_HUB_OFFLINE=1 PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) benchmarks/gpu.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
