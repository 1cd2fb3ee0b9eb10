# One command each: `make repro` (set up + run the pipeline), `make test` (set up + tests).
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test bench ui readme clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -c constraints.txt
	touch $@

repro: setup
	dvc repro

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m bench.benchmark

ui: setup
	mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$(CURDIR)/mlflow.db

readme: setup
	$(PY) -m mnistgen.report README.md

clean-venv:
	rm -rf $(VENV)
