# The README's two commands: `make demo` (set-up + main job) and `make test` (set-up + tests).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.detres-installed
CONFIG ?= configs/examples/shapes_faster_rcnn.yaml
ARGS ?=
OUT ?= output
PYTEST_ARGS ?=

.PHONY: demo test test-slow setup clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) tools/main_job.py --config $(CONFIG) --out $(OUT) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -n 2 --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(OUT) .pytest_cache
