# vpnsplit: `make demo` shows it working, `make test` proves it. Both set themselves up
# on a fresh Debian machine as root (apt packages, then a venv in .venv/).

PYTHON      ?= /usr/bin/python3
VENV        := .venv
PY          := $(VENV)/bin/python
DESTDIR     ?=
LIBDIR      := $(DESTDIR)/usr/lib/vpnsplit
SBINDIR     := $(DESTDIR)/usr/sbin
ETCDIR      := $(DESTDIR)/etc/vpnsplit
HOOKS       := up down wg-up wg-down

# Debian packages: the nftables binding (only Debian's matches its libnftables), the VPN
# clients the lab drives, and the tools tests use to look at packets.
APT_PACKAGES := iproute2 nftables python3-nftables python3-venv python3-pip openvpn \
                wireguard-tools wireguard-go tcpdump iperf3 openssl socat procps iputils-ping \
                util-linux mount git make

.PHONY: dev deps test unit kernel lab demo bench install uninstall clean

dev: deps $(VENV)/.installed

deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# --system-site-packages: python3-nftables is visible only that way. --upgrade: the venv tests
# the current pyroute2 and filelock releases even where Debian's (which the .deb uses) are installed.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade -e '.[test]' pyroute2 filelock
	touch $@

# Unit tests (parsers, planner) need no root and run first; kernel and lab tests
# create network namespaces of their own and never touch the host's.
test: dev
	$(PY) -m pytest -q tests/unit
	$(PY) -m pytest -q tests/kernel
	$(PY) -m pytest -q tests/test_lab_*.py

unit: dev
	$(PY) -m pytest -q tests/unit

kernel: dev
	$(PY) -m pytest -q tests/kernel

lab: dev
	$(PY) -m pytest -q tests/test_lab_*.py

demo: dev
	$(PY) -m tests.lab.demo

bench: dev
	$(PY) -m bench

install:
	install -d $(LIBDIR) $(SBINDIR)
	$(PYTHON) -m venv --system-site-packages $(LIBDIR)/venv
	$(LIBDIR)/venv/bin/pip install -q --disable-pip-version-check .
	install -m 0755 hooks/vpnsplit-hook $(LIBDIR)/vpnsplit-hook
	for h in $(HOOKS); do ln -sf vpnsplit-hook $(LIBDIR)/$$h; done
	ln -sf ../lib/vpnsplit/venv/bin/vpnsplit $(SBINDIR)/vpnsplit
	install -d -m 0755 $(ETCDIR) $(DESTDIR)/etc/iproute2/rt_protos.d
	[ -e $(ETCDIR)/vpnsplit.toml ] || install -m 0644 configs/vpnsplit.toml $(ETCDIR)/vpnsplit.toml
	echo "118 vpnsplit" > $(DESTDIR)/etc/iproute2/rt_protos.d/vpnsplit.conf

uninstall:
	rm -rf $(LIBDIR) $(SBINDIR)/vpnsplit $(DESTDIR)/etc/iproute2/rt_protos.d/vpnsplit.conf

clean:
	rm -rf $(VENV) build lib/*.egg-info .pytest_cache
