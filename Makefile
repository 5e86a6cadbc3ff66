# make install: the pinned CPU set in .venv (idempotent: reruns only when pyproject or constraints change)
# make test: the fast tests (a few minutes); make test-slow: the end-to-end ones; make test-all: both
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install.stamp
export HF_HUB_OFFLINE ?= 1

.PHONY: install test test-slow test-all demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e '.[dev,peer]'
	$(BIN)/python -m wsm._compat --install-hook
	touch $(STAMP)

test: install
	sh scripts/install-chromium.sh
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: install
	sh scripts/install-chromium.sh
	$(BIN)/python -m pytest -q -m slow

test-all: install
	sh scripts/install-chromium.sh
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/wsm demo --out out/demo

bench: install
	$(BIN)/python benchmarks/download.py

clean:
	rm -rf $(VENV) out
