# The two commands a newcomer needs: `make demo` and `make test`. Each creates .venv on a fresh
# machine and installs what it needs; the stamp files make reruns cheap.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint bench-deltas clean system-deps e2e-vm power-cut-sets

# Debian tools some tests and benchmarks use for real (the U-Boot and GRUB env tools, zstd,
# e2fsprogs, the real GRUB and U-Boot that run our boot scripts in QEMU). Installed when missing
# and we are root with apt; otherwise those tests skip. A tool is a command or a file path.
SYSTEM_TOOLS := fw_printenv:libubootenv-tool grub-editenv:grub-common zstd:zstd mke2fs:e2fsprogs \
	chromium:chromium mkimage:u-boot-tools mcopy:mtools mkfs.vfat:dosfstools \
	qemu-system-x86_64:qemu-system-x86 qemu-system-aarch64:qemu-system-arm \
	/usr/lib/grub/i386-pc/lnxboot.img:grub-pc-bin /usr/lib/u-boot/qemu_arm64/u-boot.bin:u-boot-qemu
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do tool=$${pair%%:*}; pkg=$${pair##*:}; \
		case $$tool in /*) test -e $$tool ;; *) PATH="$$PATH:/usr/sbin:/sbin" command -v $$tool >/dev/null 2>&1 ;; esac \
			|| missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing (Debian packages)"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null \
				|| echo "note: could not install$$missing; tests that need them will skip"; \
		else echo "note: missing$$missing; tests that need them will skip"; fi; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[signing]'
	touch $@

$(VENV)/.installed-server: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[signing,server]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-server

# The demo works in a temporary directory (about 1 GB with the default fleet) that it reports and
# removes at the end: DEMO_ARGS=--keep keeps it, DEMO_ARGS="--workspace DIR" uses (and keeps) DIR.
demo: $(VENV)/.installed-server system-deps
	$(BIN)/overdrive demo $(DEMO_ARGS)

# PostgreSQL-backed server tests run when a server answers on 127.0.0.1:5432.
test: $(VENV)/.installed-dev system-deps
	@if [ -z "$$OVERDRIVE_TEST_POSTGRES_URL" ] && $(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', 5432), 1).close()" 2>/dev/null; then \
		export OVERDRIVE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test; \
	fi; \
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench-deltas: $(VENV)/.installed-dev
	$(BIN)/python bench/deltas.py

# Every durable operation of the primary cut in a 4-ECU software set (make test samples 10).
power-cut-sets: $(VENV)/.installed-dev system-deps
	OVERDRIVE_SET_CUTS=all $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/client/test_software_set.py -k power_cut

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The vehicle on a real bootloader: a Debian disk with GRUB and two root slots in QEMU, three
# campaigns (docs/vehicles.md). Minutes, not part of `make test`. Needs root (debootstrap).
VM_TOOLS := debootstrap:debootstrap qemu-system-x86_64:qemu-system-x86 /usr/share/OVMF/OVMF_CODE_4M.fd:ovmf \
	/usr/lib/grub/x86_64-efi/linux.mod:grub-efi-amd64-bin grub-mkimage:grub-common mcopy:mtools \
	mkfs.vfat:dosfstools sgdisk:gdisk debugfs:e2fsprogs
e2e-vm: $(VENV)/.installed-dev
	@$(MAKE) --no-print-directory system-deps SYSTEM_TOOLS="$(VM_TOOLS)"
	$(BIN)/python -m tests.vm.e2e $(E2E_ARGS)
