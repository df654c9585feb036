# Two commands on a fresh machine: `make demo` (the main job on a generated slide) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/histoscale: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test,lint,dask,keras]'
	touch $@

.PHONY: install demo test lint bench
install: $(BIN)/histoscale

demo: install
	$(BIN)/histoscale demo

test: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

# ruff, the import-layers contract (pyproject: [tool.importlinter]) and mypy on the public API
lint: install
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/lint-imports
	$(BIN)/mypy src/histoscale/__init__.py src/histoscale/search src/histoscale/units.py src/histoscale/models/contract.py \
		src/histoscale/models/registry.py src/histoscale/models/card.py src/histoscale/slide/__init__.py

bench: install
	$(BIN)/python bench/recovery.py && $(BIN)/python bench/speed.py
