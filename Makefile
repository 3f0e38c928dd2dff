# Two commands for a newcomer: `make run` (set up, run the pipeline on the embedded default) and
# `make test` (set up, run the tests). Both are safe to re-run: setup is skipped when nothing changed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install -q --no-deps --no-compile
HALF := ^(torch|torchvision|triton|nvidia-|cuda-|pyarrow|opencv)
# The installed .venv is about 7 GB (torch's CUDA build is most of it: docs/benchmarks.md). Setup refuses
# up front below this, rather than failing half-way with pip's "No space left on device".
NEED_MB := 7000

# `dvc exp show` gives every stage dependency a column (about 130 here) and rich keeps one character of
# the terminal per column even when DVC folds it into "…". Without them, and without the cached path's
# accuracy and AUCs (`dvc metrics show` has them), the MCCs, the validator's metrics and the params fit
# a 200-column terminal.
EXPS_DROP := ^(assets|config\.yaml|live|predictions(_dora|_tta)?|submission|validation|.*/.*|accuracy|img_auc|roc_auc)$$

.PHONY: setup run test test-fast lint clean exps

# requirements.lock pins the whole environment, so pip installs it as listed (--no-deps: nothing to
# resolve) in two processes at once, one core each: torch, its CUDA libraries (3 GB to unpack) and
# two more large wheels beside everything else; then the project, built with the lock's setuptools
# (no isolated build environment: nothing unpinned is fetched, and it is faster), and `pip check` refuses a
# lock that misses a dependency, while pip's byte-compiling, skipped, is done by `compileall` on every
# core (the packages' own test folders left out). Without .pyc files every stage would recompile torch at
# import where PYTHONDONTWRITEBYTECODE is set. torch ships one Python 3.12-only test module.
$(STAMP): pyproject.toml requirements.lock
	@free=$$(df -Pm $(dir $(VENV)) | awk 'NR==2 {print $$4}'); test -x $(PY) || test "$$free" -ge $(NEED_MB) || \
	  { echo "make: setup needs $(NEED_MB) MB free for $(VENV) (torch's CUDA build); $$free MB free here" >&2; exit 1; }
	test -x $(PY) || python3 -m venv $(VENV)
	grep -E  '$(HALF)' requirements.lock > $(VENV)/half.txt
	grep -vE '$(HALF)' requirements.lock > $(VENV)/rest.txt
	$(PIP) -r $(VENV)/half.txt & half=$$!; $(PIP) -r $(VENV)/rest.txt; rest=$$?; \
	  wait $$half && test $$rest -eq 0
	$(PIP) --no-build-isolation -e '.[dev]'
	$(PY) -m pip check & check=$$!; \
	  $(PY) -m compileall -q -j 0 -x '/tests/|py312_intrinsics' $(VENV)/lib && wait $$check
	touch $(STAMP)

setup: $(STAMP)

run: setup
	. $(VENV)/bin/activate && dvc repro && roadwork summary

test: setup
	. $(VENV)/bin/activate && ruff check . && pytest -q

# The edit loop: every test but the end-to-end pipeline and the benchmark scripts (markers e2e, bench).
test-fast: setup
	. $(VENV)/bin/activate && ruff check . && pytest -q -m "not e2e and not bench"

exps: setup
	. $(VENV)/bin/activate && dvc exp show --drop '$(EXPS_DROP)'

lint: setup
	. $(VENV)/bin/activate && ruff check . && ruff format --check .

clean:
	rm -rf data features models predictions predictions_dora predictions_tta live submission metrics reports params.d validation export
