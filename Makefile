# Two commands for a newcomer: `make run` (set up, run the pipeline on the embedded default) and
# `make test` (set up, run the tests). Both are safe to re-run: setup is skipped when nothing changed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test lint clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# --no-compile: byte-compiling all of torch & co. took 80 s of a 2.6 min install; Python compiles
	# the modules it actually imports on first use instead.
	$(PY) -m pip install -q --no-compile -c requirements.lock -e '.[dev]'
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
