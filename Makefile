# Ansible stack, local podman lab and their checks. Run as root on Debian 12.
#   make lint-ansible          yamllint, ansible-lint (production profile), argument_specs vs defaults
#   make test-modules          unit tests of library/ modules (real redis-server / redis-sentinel)
#   make lab-prereqs           podman & co, plus the podman settings this machine needs
#   make lab-image             the lab base image (ZMQRPC_LAB_IMAGE, default localhost/zmqrpc-lab:bookworm)
#   make molecule-sentinel-ha  one molecule scenario (any molecule/<name>/ works as molecule-<name>)
#   make deploy                the README's deploy command (TOPOLOGY=<name>, default static-direct)
#   make destroy               tear the lab down

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

VENV ?= .venv
PYTHON ?= python3
VENV_STAMP := $(VENV)/.requirements-ansible.stamp
# molecule and ansible-lint call ansible-* tools by name
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv-ansible lint-ansible test-modules redis-binaries lab-prereqs lab-image molecule-% deploy destroy

venv-ansible: $(VENV_STAMP)

$(VENV_STAMP): requirements-ansible.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-ansible.txt
	touch $@

lint-ansible: $(VENV_STAMP)
	$(VENV)/bin/yamllint --strict .
	$(VENV)/bin/ansible-lint --profile production
	$(VENV)/bin/python scripts/check_argument_specs.py

test-modules: $(VENV_STAMP) redis-binaries
	ZMQRPC_REQUIRE_REDIS=1 $(VENV)/bin/python -m pytest -p no:cacheprovider tests/modules

# The module tests start their own redis-server / redis-sentinel on ports they pick.
redis-binaries:
	command -v redis-server >/dev/null && command -v redis-sentinel >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server redis-sentinel; }

lab-prereqs:
	bash scripts/lab-prereqs.sh

lab-image: lab-prereqs
	bash scripts/lab-image.sh

molecule-%: $(VENV_STAMP) lab-image
	@test -f molecule/$*/molecule.yml || { echo "no scenario molecule/$*" >&2; exit 1; }
	start=$$(date +%s); \
	$(VENV)/bin/molecule test -s $*; \
	echo "molecule scenario $* passed in $$(( $$(date +%s) - start )) s"

deploy:
	bash scripts/deploy.sh

destroy:
	bash scripts/deploy.sh destroy
