# Two commands do all set-up from a fresh clone: `make demo` and `make test` (`make docs` builds the
# site: the same set-up plus the docs extra).
# Both create .venv on first use; a second run reuses it (the stamp only changes with the deps).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-gpu docs clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,docs]"
	touch $(DOCS_STAMP)

demo: $(STAMP)
	$(PY) -m analyses.frequency_shift

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check vaeprobe trainers analyses tests benchmarks

# the GPU suite (benchmarks/gpu_suite.py): trainer vs bare model per precision mode, eval's GPU rows
bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu_suite --json gpu_suite.json

# the site into docs/_build/html: warnings are errors, every reference must resolve (nitpicky),
# the gallery's scripts run (see docs/conf.py for what happens to intersphinx offline)
docs: $(DOCS_STAMP)
	OMP_NUM_THREADS=1 $(PY) -m sphinx -b html -n -W --keep-going docs docs/_build/html

clean-venv:
	rm -rf $(VENV)
