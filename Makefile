# Two commands for a newcomer: `make run` (set up, run the pipeline on the embedded default) and
# `make test` (set up, run the tests). Both are safe to re-run: setup is skipped when nothing changed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# `dvc exp show` gives every stage dependency a column (about 130 here) and rich keeps one character of
# the terminal per column even when DVC folds it into "…"; without them the table fits 200 columns.
DEPS_COLUMNS := ^(assets|config\.yaml|live|predictions(_dora|_tta)?|submission|validation|.*/.*)$$

.PHONY: setup run test lint clean exps

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pip byte-compiles on one core (80 s of a 2.6 min install): compile on every core instead. Without
	# .pyc files every stage would recompile torch at import where PYTHONDONTWRITEBYTECODE is set.
	# torch ships one Python 3.12-only test module, which 3.11 cannot compile.
	$(PY) -m pip install -q --no-compile -c requirements.lock -e '.[dev]'
	$(PY) -m compileall -q -j 0 -x py312_intrinsics $(VENV)/lib
	touch $(STAMP)

setup: $(STAMP)

run: setup
	. $(VENV)/bin/activate && dvc repro && roadwork summary

test: setup
	. $(VENV)/bin/activate && ruff check . && pytest -q

exps: setup
	. $(VENV)/bin/activate && dvc exp show --drop '$(DEPS_COLUMNS)'

lint: setup
	. $(VENV)/bin/activate && ruff check . && ruff format --check .

clean:
	rm -rf data features models predictions predictions_dora predictions_tta live submission metrics reports params.d validation
