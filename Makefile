# Set-up and the two jobs. `make bench` runs the benchmarks, `make test` the tests; each creates
# the virtual environment first if it is missing (`make install` only that). On a GPU machine, point TORCH at your CUDA build
# (or an existing install: TORCH=torch) and add the extras you need: EXTRAS=test,gpu,gptq,flash.
# constraints.txt pins the stack the committed baselines were measured with.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
EXTRAS ?= test

# One stamp per TORCH/EXTRAS choice, so that changing them installs again.
STAMP := $(VENV)/.installed-$(shell echo "$(TORCH) $(EXTRAS)" | md5sum | cut -c1-8)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt "$(TORCH)" -e ".[$(EXTRAS)]"
	touch $@

.PHONY: install bench test
install: $(STAMP)

bench: $(STAMP)
	$(PY) -m pytest tests/benchmarks $(ARGS)

test: $(STAMP)
	$(PY) -m pytest tests/unit $(ARGS)
