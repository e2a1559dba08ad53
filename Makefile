# vpnsplit: `make demo` shows it working, `make test` proves it. Both set themselves up
# on a fresh Debian machine as root (apt packages, then a venv in .venv/).

PYTHON      ?= /usr/bin/python3
VENV        := .venv
PY          := $(VENV)/bin/python
DESTDIR     ?=
LIBDIR      := $(DESTDIR)/usr/lib/vpnsplit
SBINDIR     := $(DESTDIR)/usr/sbin
ETCDIR      := $(DESTDIR)/etc/vpnsplit
UNITDIR     := $(DESTDIR)/usr/lib/systemd/system
MANDIR      := $(DESTDIR)/usr/share/man
HOOKS       := up down wg-up wg-down
UNITS       := systemd/vpnsplit.service systemd/vpnsplit-watch.service systemd/vpnsplit-default@.service

# Debian packages: the nftables binding (only Debian's matches its libnftables), the VPN
# clients the lab drives, the tools tests use to look at packets, and systemd-nspawn (a container on a bridge).
APT_PACKAGES := iproute2 nftables python3-nftables python3-venv python3-pip openvpn \
                wireguard-tools wireguard-go tcpdump iperf3 openssl socat procps iputils-ping \
                util-linux mount git make systemd dnsmasq-base bind9-dnsutils iptables systemd-container
# what `make deb` builds with, and what `make fresh` builds and boots root file systems with
BUILD_PACKAGES := debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
FRESH_PACKAGES := mmdebstrap systemd-container

.PHONY: dev deps lint test unit kernel lab demo bench install uninstall clean deb fresh

dev: deps $(VENV)/.installed

# apt-get install, without Recommends, of those of $(1) that are not installed yet
define apt_install
	@missing=$$(for p in $(1); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			-o DPkg::Lock::Timeout=600 $$missing; \
	fi
endef

deps:
	$(call apt_install,$(APT_PACKAGES))

# --system-site-packages: python3-nftables is visible only that way. --upgrade: the venv tests
# the current pyroute2 and filelock releases even where Debian's (which the .deb uses) are installed.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade -e '.[test]' pyroute2 filelock
	touch $@

# The linter first (seconds); unit tests (parsers, planner) need no root and run next;
# kernel and lab tests create network namespaces of their own and never touch the host's.
test: lint
	$(PY) -m pytest -q tests/unit
	$(PY) -m pytest -q tests/kernel
	$(PY) -m pytest -q tests/test_lab_*.py

lint: dev
	$(VENV)/bin/ruff check lib tests bench

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

# The Debian package (debian/): built from a copy of the checkout's files (git ls-files; without
# git, all but the venv and build products) in build/deb,
# with Debian's python3-pyroute2/-filelock/-nftables as dependencies and Debian's Python
# (PATH: not a pyenv or venv one); -d: BUILD_PACKAGES are the build dependencies, no compiler
# (build-essential) needed; vpnsplit_*.deb lands here.
deb:
	$(call apt_install,$(BUILD_PACKAGES))
	rm -rf build/deb && mkdir -p build/deb/vpnsplit
	{ git ls-files -z --cached --others --exclude-standard 2>/dev/null || \
	  find . \( -name .git -o -name .venv -o -name build -o -name __pycache__ -o -name .pytest_cache \
		-o -name .hypothesis -o -name '*.deb' \) -prune -o ! -type d -print0; } | \
		tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C build/deb/vpnsplit
	cd build/deb/vpnsplit && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -d -us -uc --no-sign -j1 >../build.log 2>&1 || { tail -40 ../build.log; exit 1; }
	mv build/deb/vpnsplit_*.deb .
	rm -rf build/deb  # (kept on failure: build/deb/build.log)
	@ls vpnsplit_*.deb

# The README's two commands on bare Debian 12 and 13 root file systems, then the .deb
# installed, driven by real VPN clients, the units booted, purged (.ci/fresh; RELEASES=bookworm for one).
fresh:
	$(call apt_install,$(FRESH_PACKAGES))
	.ci/fresh

install:
	install -d $(LIBDIR) $(SBINDIR)
	$(PYTHON) -m venv --system-site-packages $(LIBDIR)/venv
	$(LIBDIR)/venv/bin/pip install -q --disable-pip-version-check .
	install -m 0755 hooks/vpnsplit-hook $(LIBDIR)/vpnsplit-hook
	for h in $(HOOKS); do ln -sf vpnsplit-hook $(LIBDIR)/$$h; done
	ln -sf ../lib/vpnsplit/venv/bin/vpnsplit $(SBINDIR)/vpnsplit
	install -d -m 0755 $(ETCDIR) $(DESTDIR)/etc/iproute2/rt_protos.d $(UNITDIR) $(MANDIR)/man5 $(MANDIR)/man8
	[ -e $(ETCDIR)/vpnsplit.toml ] || install -m 0644 configs/vpnsplit.toml $(ETCDIR)/vpnsplit.toml
	install -m 0644 configs/iproute2/vpnsplit.conf $(DESTDIR)/etc/iproute2/rt_protos.d/vpnsplit.conf
	install -m 0644 $(UNITS) $(UNITDIR)/
	install -m 0644 man/vpnsplit.8 $(MANDIR)/man8/
	install -m 0644 man/vpnsplit.toml.5 $(MANDIR)/man5/

uninstall:
	rm -rf $(LIBDIR) $(SBINDIR)/vpnsplit $(DESTDIR)/etc/iproute2/rt_protos.d/vpnsplit.conf \
		$(addprefix $(UNITDIR)/,$(notdir $(UNITS))) $(MANDIR)/man8/vpnsplit.8 $(MANDIR)/man5/vpnsplit.toml.5

clean:
	rm -rf $(VENV) build lib/*.egg-info .pytest_cache vpnsplit_*.deb
