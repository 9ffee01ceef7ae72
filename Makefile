# Entry points for a fresh Debian machine, as root:
#   make demo   boot a throwaway systemd container and show a non-root user restarting Ollama
#   make test   lint, unit tests, and the end-to-end suite on Debian 12, 13 and unstable containers
#   make deb    build dist/ollamactl_<version>_all.deb in a clean bookworm root, and lint it
#   make wheel  build dist/ollamactl-<version>-py3-none-any.whl (for pip; then `sudo ollamactl setup`)
# All install what they need first (apt packages, a venv with the test tools); demo and the
# end-to-end suite install the .deb that `make deb` builds into their containers with apt.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
SUITE  ?= bookworm
APT_PACKAGES := systemd-container debootstrap util-linux python3-venv
DEB_VERSION  := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' packaging/debian/changelog)
DEB          := $(CURDIR)/dist/ollamactl_$(DEB_VERSION)_all.deb

.PHONY: deps roots deb wheel demo test unit e2e lint bench clean

deps: $(VENV)/.stamp
	@command -v systemd-nspawn >/dev/null && command -v debootstrap >/dev/null || { \
	  echo "installing $(APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; }
	@# promtool checks and tests the alerting rules (tests/unit/test_alert_rules.py). Debian has it only in the
	@# prometheus package, whose postinst enables and starts a Prometheus server: not wanted here, so disabled
	@# and stopped at once (no recommends: node_exporter would be a second server).
	@command -v promtool >/dev/null || { \
	  echo "installing prometheus for promtool (its server disabled)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
	  && systemctl disable -q prometheus.service && service prometheus stop; }

# Not an editable install (-e makes setuptools print a wall of notes): the tests import the package
# from the checkout itself (pytest runs from here); the venv's copy brings the dependencies.
$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV) || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q '.[test]'
	touch $@

# The test roots (Debian 12, 13, unstable) and the build root, debootstrapped side by side on a
# fresh machine (about 3 min, against 6 one after another); cached afterwards.
roots: deps
	$(VPY) tests/testbed.py build --all

# Cached by a hash of the package's sources, so this is instant when nothing changed.
deb: deps
	$(VPY) tests/debbuild.py --out dist

# setuptools adds whatever an earlier build left in build/lib (the unit files' old place, ollamactl/_data/*).
wheel: deps
	rm -rf build/lib
	$(VPY) -m pip wheel -q --no-deps -w dist .

demo: deb
	$(VPY) -m tests.demo --suite $(SUITE) --deb $(DEB)

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Property-based tests run with a fixed seed and a bounded number of examples (tests/conftest.py).
export HYPOTHESIS_PROFILE ?= ci

unit: deps
	$(VPY) -m pytest -ra tests/unit tests/test_standin.py tests/test_guard.py

e2e: roots deb
	OLLAMACTL_DEB=$(DEB) OLLAMACTL_E2E_REQUIRED=1 $(VPY) -m pytest -ra tests/e2e

# The do-no-harm module runs beside the rest (tests/ci.py says why); both print their summaries.
test: lint roots deb
	OLLAMACTL_DEB=$(DEB) OLLAMACTL_E2E_REQUIRED=1 $(VPY) -m tests.ci

bench: deps
	$(VPY) -m bench.bench_restart --suite $(SUITE)

clean:
	-$(VPY) tests/testbed.py gc
	rm -rf $(VENV) build dist *.egg-info
