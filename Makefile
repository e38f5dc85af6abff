# Two commands do everything on a fresh machine: `make demo` and `make test` (see README.md).
# The first run creates .venv and installs the toolkit with its notebook and dev extras; a stamp
# file (rebuilt when pyproject.toml changes) makes later runs start at once.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lab notebooks clean distclean

demo: $(STAMP)
	$(BIN)/python -m mem_toolkit demo --out runs/demo

# The suite runs in one worker per core (at most 4: each worker holds its own torch); a test file stays in one
# worker, so its module fixtures are built once. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

# Execute every notebook into runs/notebooks/<timestamp>/ (executed copies + HTML); MEM_TOOLKIT_FAST=1 for tiny sizes.
notebooks: $(STAMP)
	$(BIN)/python -m mem_toolkit.notebooks

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[notebooks,dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mem_toolkit)"
	touch $(STAMP)

# Generated outputs and caches; the venv stays (`make distclean` removes it too).
clean:
	rm -rf runs test-artifacts build dist .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
