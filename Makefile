# SPDX-License-Identifier: BSD-3-Clause
# swiftcache — see README.md.
#   make          build ./libswiftcache.so (release, Swift runtime linked in)
#   make run      install what is missing, build, serve a 1G memory disk through the filter
#                 (ARGS='cache=unsafe ...' passes parameters to the filter)
#   make check    unit tests + nbdkit tests, one closing "N passed, M failed" line
#   make bench    C cache filter vs swiftcache, side by side (not part of check)
#   make deb      Debian package ./swiftcache_VERSION_ARCH.deb (dpkg-buildpackage), checked by lintian

SWIFT_BUILD = swift build -c release -Xswiftc -static-stdlib
SO          = libswiftcache.so
SOURCES     = Package.swift $(shell find Sources -type f)
# The one version string lives in Sources/SwiftCacheFilter/Version.swift.
VERSION    := $(shell sed -n 's/^ *static let number = "\(.*\)"/\1/p' Sources/SwiftCacheFilter/Version.swift)

.PHONY: all deps run check unit-test shell-test bench install uninstall clean version

all: $(SO)

$(SO): $(SOURCES)
	$(SWIFT_BUILD) --product swiftcache
	cp "$$($(SWIFT_BUILD) --show-bin-path)/$(SO)" $@

# Debian packages the filter and its tests need (installed only when missing).
deps:
	@./scripts/install-deps

run: deps $(SO)
	@./scripts/serve $(ARGS)

check: deps $(SO)
	@./scripts/check

unit-test:
	swift test

shell-test: $(SO)
	./test-scripts/run.sh

bench: deps $(SO)
	./bench/run

FILTERDIR = $(shell nbdkit --dump-config 2>/dev/null | sed -n 's/^filterdir=//p')
# Stripped (-s): the symbol table only helps a debugger; nbdkit needs the
# dynamic symbols, which stay.
install: $(SO)
	install -D -s -m 0755 $(SO) $(DESTDIR)$(FILTERDIR)/nbdkit-swiftcache-filter.so

uninstall:
	rm -f $(DESTDIR)$(FILTERDIR)/nbdkit-swiftcache-filter.so

version:
	@echo $(VERSION)

# dpkg-buildpackage writes to ..: the .deb, .buildinfo and .changes move here.
# lintian fails on any error or warning (debian/README.source).
DEB_ARCH = $(shell dpkg --print-architecture 2>/dev/null)
DEB_BASE = swiftcache_$(VERSION)_$(DEB_ARCH)
.PHONY: deb
deb: deps
	dpkg-buildpackage -b -us -uc
	mv ../$(DEB_BASE).deb ../$(DEB_BASE).buildinfo ../$(DEB_BASE).changes .
	lintian --fail-on error,warning $(DEB_BASE).changes

clean:
	rm -rf .build $(SO)
