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
# molecule and ansible-lint call ansible-* tools by name
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# Output that is not a terminal (CI logs, `make ... > file`), or NO_COLOR set: no colour codes and no box
# characters. molecule decides on colour from TERM before it looks at the terminal, and passes it to ansible.
ifeq ($(shell test -t 2 && echo tty),)
NO_COLOR ?= 1
endif
ifneq ($(NO_COLOR),)
export NO_COLOR
export PY_COLORS := 0
export ANSIBLE_NOCOLOR := 1
export ANSIBLE_FORCE_COLOR := 0
MOLECULE_OUTPUT := --no-command-borders
endif

.PHONY: venv-ansible lint-ansible test-modules redis-binaries lab-prereqs lab-image molecule-% deploy destroy

# The project venv, with its one stamp (.venv/.zmqrpc-deps): scripts/dev-setup.sh only checks it when
# nothing changed, so `make lint-ansible` right after set-up installs nothing.
venv-ansible:
	VENV_ONLY=1 bash scripts/dev-setup.sh

lint-ansible: venv-ansible
	$(VENV)/bin/yamllint --strict .
	$(VENV)/bin/ansible-lint --profile production
	$(VENV)/bin/python scripts/check_argument_specs.py

test-modules: venv-ansible redis-binaries
	ZMQRPC_REQUIRE_REDIS=1 $(VENV)/bin/python -m pytest -p no:cacheprovider tests/modules

# The module tests start their own redis-server / redis-sentinel on ports they pick.
redis-binaries:
	command -v redis-server >/dev/null && command -v redis-sentinel >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server redis-sentinel; }

lab-prereqs:
	bash scripts/lab-prereqs.sh

lab-image: lab-prereqs
	bash scripts/lab-image.sh

molecule-%: venv-ansible lab-image
	@test -f molecule/$*/molecule.yml || { echo "no scenario molecule/$*" >&2; exit 1; }
	start=$$(date +%s); \
	$(VENV)/bin/molecule test $(MOLECULE_OUTPUT) -s $*; \
	echo "molecule scenario $* passed in $$(( $$(date +%s) - start )) s"

deploy:
	bash scripts/deploy.sh

destroy:
	bash scripts/deploy.sh destroy
