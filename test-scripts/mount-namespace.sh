# SPDX-License-Identifier: BSD-3-Clause
# Sourced first (before lib.sh) by tests that mount a small tmpfs: re-runs
# the test in a private mount namespace (unshare -m, needs root), so its
# mounts vanish with it; there SWIFTCACHE_IN_NS=1. Where no namespace can
# be made the test goes on without one, unless REQUIRE_NS=1 says to skip
# it (77). Then lib.sh's mount_tmpfs mounts inside the namespace.
if [ -z "${SWIFTCACHE_IN_NS:-}" ]; then
    if unshare -m --propagation private true 2>/dev/null; then
        SWIFTCACHE_IN_NS=1 exec unshare -m --propagation private bash "$0" "$@"
    fi
    if [ "${REQUIRE_NS:-0}" = 1 ]; then
        echo "$(basename "$0" .sh): SKIP: cannot create a mount namespace" >&2
        exit 77
    fi
fi
