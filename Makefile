# Two entry points for a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# exactly this torch: a CPU wheel is on disk; an unpinned torch pulls CUDA packages
	$(BIN)/python -m pip install "torch==2.13.0"
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/deepreg-ablation demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q Testing/Python

bench: $(STAMP)
	$(BIN)/deepreg-ablation bench --infer --train

clean:
	rm -rf $(VENV) demo_out
