# colo-proxy: top-level build and test entry points.
#   make demo   the README's main job (namespace demo, userspace datapath)
#   make test   everything CI runs: deps, lint, host tests, module build, guest-kernel tests,
#               and the debug kernel's suite when kmod/ or its recipe changed
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON   ?= python3
VENV     ?= .venv
VPY      := $(VENV)/bin/python
BUILD    ?= build
# Kernels the module is built and tested against (Debian bookworm, bookworm-backports).
KERNELS  ?= 6.1 6.12
# The debug kernel (lockdep, KASAN, kmemleak), built from Debian's linux-source-6.12 with
# scripts/debug-kernel.config; `make test` runs its suite when kmod/ or the debug recipe differ
# from scripts/debug-verified (docs/development.md, "The debug kernel").
DEBUG_KERNEL ?= 6.12-debug
PYTEST_ARGS ?=

# Debian packages needed by the build and the tests (see docs/development.md).
APT_PKGS := build-essential pkg-config make gcc kmod cpio busybox-static xz-utils zstd \
            qemu-system-x86 linux-headers-amd64 dwarves sparse bc \
            iproute2 iptables nftables libnftables1 libxtables-dev \
            libnetfilter-queue-dev iputils-ping util-linux libcap2-bin tcpdump curl openssl \
            flex bison libelf-dev libssl-dev netsniff-ng ethtool

.PHONY: help deps venv lint test test-host kmod test-kernel test-debug demo demo-kernel bench bench-kernel bench-sec clean

help:
	@echo "make demo        run the namespace demo (root)"
	@echo "make test        install deps, lint, host tests, build modules, guest-kernel tests (root)"
	@echo "make kmod        build the modules for: $(KERNELS)"
	@echo "make test-host   host tests only;  make test-kernel  guest-kernel tests only"
	@echo "make test-debug  the debug kernel ($(DEBUG_KERNEL)): build/cache, tests, checker self-test"
	@echo "make bench       run the benchmarks in bench/"
	@echo "make bench-kernel  bench/kernel.py (kernel datapath vs plain/NFQUEUE/QEMU) in the 6.1 guest"
	@echo "make bench-sec     bench/secondary.py (SECCOLO translated vs untranslated) in the 6.1 guest"

deps:
	@scripts/apt-deps.sh $(APT_PKGS)

$(VENV)/.stamp: pyproject.toml
	@echo "== venv: $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	touch $@

venv: $(VENV)/.stamp

lint: venv
	@echo "== ruff"
	$(VENV)/bin/ruff check colo_proxy tests bench
	@echo "== mypy --strict"
	$(VENV)/bin/mypy --strict colo_proxy

test-host: deps venv
	@echo "== host tests"
	$(VPY) -m pytest -m 'not kernel' $(PYTEST_ARGS)

kmod: deps
	@scripts/kmod-build.sh $(BUILD) $(KERNELS)

test-kernel: deps venv kmod
	@scripts/guest-test.sh $(BUILD) $(KERNELS)

# Skipped when the same kmod/tests/scripts input already passed on this machine
# (DEBUG_TEST=always forces it, DEBUG_TEST=skip leaves it out, DEBUG_TEST=changed also skips
# when kmod/ and the recipe match scripts/debug-verified): scripts/debug-test.sh.
test-debug: deps venv
	@scripts/debug-test.sh $(BUILD) $(DEBUG_KERNEL)

# `test` ends with the debug kernel's suite, scheduled: DEBUG_TEST defaults to `changed` here,
# so it runs (building the debug kernel if this machine has none) only when kmod/ or the debug
# recipe differ from the tree scripts/debug-verified names; a fresh debug kernel plus its suite
# would not fit next to the rest in CI's time on every run (docs/development.md, "The debug
# kernel", "Cost, and why it is scheduled").
test: deps venv lint test-host test-kernel
	@DEBUG_TEST=$${DEBUG_TEST:-changed} scripts/debug-test.sh $(BUILD) $(DEBUG_KERNEL)

demo: deps venv
	$(VENV)/bin/colo-proxy demo $(DEMO_ARGS)

# The demo on the kernel datapath inside the 6.1 guest (a host that cannot load modules);
# the live view on the console: scripts/demo-kernel.sh.
demo-kernel: deps venv
	@scripts/demo-kernel.sh $(BUILD) 6.1 -- $(DEMO_ARGS)

bench: deps venv
	$(VPY) bench/compare.py

# bench/kernel.py (issue 10 §6) inside the 6.1 guest: scripts/bench-kernel.sh.
bench-kernel: deps venv
	@scripts/bench-kernel.sh $(BUILD) 6.1 -- $(BENCH_ARGS)

# bench/secondary.py (issue 11 §4) inside the 6.1 guest.
bench-sec: deps venv
	@BENCH_SCRIPT=bench/secondary.py scripts/bench-kernel.sh $(BUILD) 6.1 -- $(BENCH_ARGS)

clean:
	rm -rf $(BUILD) kmod/nfnetlink_colo/{*.o,*.ko,*.mod,*.mod.c,.*.cmd,modules.order,Module.symvers}
