# SPDX-License-Identifier: BSD-3-Clause
# swiftcache — see README.md.
#   make          build ./libswiftcache.so (release, Swift runtime linked in) and the man page
#                 ./nbdkit-swiftcache-filter.1 (from doc/nbdkit-swiftcache-filter.pod, with pod2man)
#   make run      install what is missing, build, serve a 1G memory disk through the filter
#                 (ARGS='cache=unsafe ...' passes parameters to the filter)
#   make check    unit tests + nbdkit tests + lint, one closing "N passed, M failed" line
#   make lint     swift-format (the toolchain's) with .swift-format, strict; no output when clean
#   make bench    C cache filter vs swiftcache, side by side (not part of check)
#   make soak     fault soak, crash/restart, resource bounds (a few minutes; not part of check)
#   make install  the filter into nbdkit's filterdir, the man page into $(MANDIR)/man1 (DESTDIR honoured)
#   make deb      Debian package ./swiftcache_VERSION_ARCH.deb (dpkg-buildpackage), checked by lintian
#   make fuzz     libFuzzer on the core's request engine for FUZZ_SECONDS (fuzz/README.md; not part of check)

SWIFT_BUILD = swift build -c release -Xswiftc -static-stdlib --disable-local-rpath
SO          = libswiftcache.so
SOURCES     = Package.swift swiftcache.syms $(shell find Sources -type f)
# nbdkit loads only a filter built against its own header: an nbdkit upgrade
# (a new nbdkit-version.h) must rebuild the filter.
NBDKIT_HEADERS = $(wildcard $(shell pkg-config --variable=includedir nbdkit 2>/dev/null)/nbdkit-*.h)
# The one version string lives in Sources/SwiftCacheFilter/Version.swift.
VERSION    := $(shell sed -n 's/^ *static let number = "\(.*\)"/\1/p' Sources/SwiftCacheFilter/Version.swift)

# The man page. Its date is fixed, so that a build is reproducible:
# SOURCE_DATE_EPOCH when set, else the date of the last commit that changed
# the page or the version, else (outside git) a constant.
MAN        = nbdkit-swiftcache-filter.1
POD        = doc/nbdkit-swiftcache-filter.pod
MAN_DATE  := $(if $(SOURCE_DATE_EPOCH),$(shell date -u -d "@$(SOURCE_DATE_EPOCH)" +%Y-%m-%d),$(shell \
               git log -1 --format=%cs -- $(POD) Sources/SwiftCacheFilter/Version.swift 2>/dev/null))
ifeq ($(MAN_DATE),)
MAN_DATE  := 2026-12-02
endif

.PHONY: all man deps run check unit-test shell-test lint bench install uninstall clean version

PREFIX ?= /usr/local
MANDIR ?= $(PREFIX)/share/man

all: $(SO) $(MAN)

$(SO): $(SOURCES) $(NBDKIT_HEADERS)
	$(SWIFT_BUILD) --product swiftcache
	cp "$$($(SWIFT_BUILD) --show-bin-path)/$(SO)" $@

man: $(MAN)

# pod2man (Debian package perl); @VERSION@ in the page becomes $(VERSION).
$(MAN): $(POD) Sources/SwiftCacheFilter/Version.swift
	@test -n "$(VERSION)" || { echo "no version in Sources/SwiftCacheFilter/Version.swift" >&2; exit 1; }
	sed 's/@VERSION@/$(VERSION)/g' $(POD) | pod2man --section=1 --center=nbdkit \
	    --release="swiftcache $(VERSION)" --name=nbdkit-swiftcache-filter --date="$(MAN_DATE)" \
	    --errors=die >$@.tmp || { rm -f $@.tmp; exit 1; }
	mv $@.tmp $@

# Debian packages the filter and its tests need (installed only when missing).
deps:
	@./scripts/install-deps

run: deps $(SO)
	@./scripts/serve $(ARGS)

check: deps $(SO) $(MAN)
	@./scripts/check

unit-test:
	swift test

# The unit tests under AddressSanitizer, then ThreadSanitizer, each in a scratch
# path of its own (.build-asan, .build-tsan); any report fails (scripts/sanitize).
.PHONY: sanitize
sanitize: deps
	@./scripts/sanitize

shell-test: $(SO) $(MAN)
	./test-scripts/run.sh

# Every Swift file, against the checked-in .swift-format. To fix what it reports:
#   swift format format --in-place --recursive --configuration .swift-format $(LINT_PATHS)
LINT_PATHS = Package.swift Sources Tests
lint:
	swift format lint --strict --recursive --configuration .swift-format $(LINT_PATHS)

bench: deps $(SO)
	./bench/run

# The fault soak, crash/restart and resource checks of issue 10 (a few minutes; not part of check,
# which runs the short test-soak.sh). SOAK_ARGS='--seconds 30 --seed 7' etc. go to test-scripts/soak.py.
.PHONY: soak
soak: deps $(SO)
	/usr/bin/python3 test-scripts/soak.py --filter ./$(SO) $(SOAK_ARGS)

FILTERDIR = $(shell nbdkit --dump-config 2>/dev/null | sed -n 's/^filterdir=//p')
# Stripped (-s): the symbol table only helps a debugger; nbdkit needs the
# dynamic symbols, which stay.
# The man page goes under PREFIX (default /usr/local; a package uses PREFIX=/usr).
install: $(SO) $(MAN)
	install -D -s -m 0755 $(SO) $(DESTDIR)$(FILTERDIR)/nbdkit-swiftcache-filter.so
	install -D -m 0644 $(MAN) $(DESTDIR)$(MANDIR)/man1/$(MAN)

uninstall:
	rm -f $(DESTDIR)$(FILTERDIR)/nbdkit-swiftcache-filter.so
	rm -f $(DESTDIR)$(MANDIR)/man1/$(MAN)

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
	rm -rf .build $(SO) $(MAN) $(MAN).tmp

# libFuzzer on the core's request engine against a reference model (fuzz/README.md).
# New inputs go to fuzz/corpus (only its seed-* files are in git); an input that
# fails is saved in fuzz/crashes/: copy it to fuzz/regressions/ (swift test replays those).
FUZZ_SECONDS ?= 120
FUZZ_FLAGS   ?=
# (lld: gold warns about every ASan symbol.)
FUZZ_BUILD    = swift build -c release --scratch-path .build/fuzz --product SwiftCacheFuzz \
                -Xswiftc -sanitize=fuzzer,address -Xswiftc -use-ld=lld -Xcc -DSWIFTCACHE_LIBFUZZER
.PHONY: fuzz
fuzz:
	$(FUZZ_BUILD)
	@mkdir -p fuzz/corpus fuzz/crashes
	SWIFT_BACKTRACE=enable=no "$$($(FUZZ_BUILD) --show-bin-path)/SwiftCacheFuzz" fuzz/corpus \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -timeout=300 -print_final_stats=1 -print_funcs=0 \
	    -artifact_prefix=fuzz/crashes/ $(FUZZ_FLAGS) \
	|| { echo "make fuzz: a failing input is in fuzz/crashes/ (fuzz/README.md says what next)" >&2; exit 1; }

