# Two commands on a fresh machine:  `make repro`  and  `make test`.
# Both create (once) and reuse the local virtual environment in .venv.
VENV   := .venv
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test

# Re-installs only when pyproject.toml changes. torch goes first: pinned, it takes the
# local CPU wheel; left to a dependency resolver it would pull several GB of CUDA.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

repro: setup
	dvc repro

# Lint and format first (seconds), then the tests. pytest exits 5 when it collects no test:
# that is a failure here, not a pass.
test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc
