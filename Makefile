# Set-up and the two jobs. `make bench` runs the benchmarks, `make test` the tests; each creates
# the virtual environment first if it is missing (`make install` only that). On a GPU machine, point TORCH at your CUDA build
# (or an existing install: TORCH=torch) and add the extras you need: EXTRAS=test,gpu,gptq,flash.
# ARGS goes to pytest: make bench ARGS="-k qwen-7b".
# constraints.txt pins the stack the committed baselines were measured with, torch aside: TORCH pins it.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
EXTRAS ?= test

# One stamp per TORCH/EXTRAS choice, so that changing them installs again.
STAMP := $(VENV)/.installed-$(shell echo "$(TORCH) $(EXTRAS)" | md5sum | cut -c1-8)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "installing $(TORCH) and sftbench[$(EXTRAS)] into $(VENV) (a minute or more) ..."
	$(PY) -m pip install -q -c constraints.txt "$(TORCH)" -e ".[$(EXTRAS)]"
	touch $@

.PHONY: install bench test
install: $(STAMP)

# -rfEs: failures, errors and each skip's reason (a row without its GPU or extra) in the summary.
bench: $(STAMP)
	$(PY) -m pytest tests/benchmarks -rfEs $(ARGS)

test: $(STAMP)
	$(PY) -m pytest tests/unit $(ARGS)
