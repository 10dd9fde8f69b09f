PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean chromium

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
	$(BIN)/python -m trainlab doctor runs/demo --self-check

# the report test renders report.html in headless Chromium (Debian's package; the machines run as root)
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "warning: could not install chromium; the report test skips (and fails under CI=true)"

# two workers, a test file each: most tests wait on a single-threaded trainlab process, so two at once
# nearly halve the suite on 2 cores; a file stays on one worker (its fixtures and the errors doc need it)
TEST_WORKERS ?= 2
test: venv chromium
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: venv
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
