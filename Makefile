# One command each: `make repro` (set up + run the pipeline), `make test` (set up + tests).
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test bench bench-laptop ui ui-check plots-offline readme clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -c constraints.txt
	touch $@

repro: setup
	dvc repro

test: setup
	$(PY) -m pytest -q -n 2 tests

bench: setup
	$(PY) -m bench.benchmark

# The ordinary-laptop path on any x86 machine: AVX2 kernels only (oneDNN, ATen, MKL), so fp32
# (precision: auto then never picks bf16), plus a timed default `dvc repro` in a temporary copy.
bench-laptop: setup
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
		$(PY) -m bench.benchmark --repeats 3 --pipeline

ui: setup
	$(PY) tools/ui.py --port 5000

# Screenshots of the MLflow UI from headless Chromium -> docs/ui/ (needs chromium; not in `make test`)
ui-check: setup
	$(PY) tools/ui_check.py

# `dvc plots show` as one self-contained page (curves drawn to SVG): opens without internet
plots-offline: setup
	$(PY) -m pip install --disable-pip-version-check -q vl-convert-python==1.9.0.post1
	$(PY) tools/plots_offline.py

readme: setup
	$(PY) -m mnistgen.report README.md docs/evaluation.md

clean-venv:
	rm -rf $(VENV)
