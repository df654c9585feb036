# Two commands on a fresh machine: `make demo` (the main job on a generated slide) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/histoscale: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test,dask,keras]'
	touch $@

.PHONY: install demo test bench
install: $(BIN)/histoscale

demo: install
	$(BIN)/histoscale demo

test: install
	$(BIN)/python -m pytest -n 2 -q

bench: install
	$(BIN)/python bench/recovery.py && $(BIN)/python bench/speed.py
