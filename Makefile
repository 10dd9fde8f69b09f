PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: venv
	$(BIN)/python -m trainlab data get shakespeare
	$(BIN)/python -m trainlab train --preset shakespeare-char --run-dir runs/demo --fresh
	$(BIN)/python -m trainlab generate runs/demo --prompt "ROMEO:" --max-new-tokens 300 --temperature 0.8 --top-k 40 --seed 1

test: venv
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
