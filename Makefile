# Two commands for a newcomer: `make run` (set up, run the pipeline on the embedded default) and
# `make test` (set up, run the tests). Both are safe to re-run: setup is skipped when nothing changed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test lint clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	. $(VENV)/bin/activate && dvc repro && roadwork summary

test: setup
	. $(VENV)/bin/activate && ruff check . && pytest -q

lint: setup
	. $(VENV)/bin/activate && ruff check . && ruff format --check .

clean:
	rm -rf data features models predictions live submission metrics reports
