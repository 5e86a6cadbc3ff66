# make install: the pinned CPU set in .venv (idempotent: reruns only when pyproject or constraints change)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install.stamp
export HF_HUB_OFFLINE ?= 1

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e '.[dev,peer]'
	touch $(STAMP)

test: install
	sh scripts/install-chromium.sh
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/wsm demo --out out/demo

bench: install
	$(BIN)/python benchmarks/download.py

clean:
	rm -rf $(VENV) out
