#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Capabilities the client sees in each cache mode (SPEC §3), over plugins
# whose flush, FUA (none/emulate/native), multi-conn and block size
# constraints differ.
#
#   callback        writeback   writethrough   unsafe
#   can_flush       plugin's    plugin's       yes
#   can_fua         plugin's    plugin's       native
#   can_multi_conn  yes         plugin's       yes
#   can_cache       native      native         native
#   can_fast_zero   yes         yes            yes
#   block_size      plugin's; none set: 1 / cache block size / 0xffffffff;
#                   else preferred raised to the block size if max allows
#
# The client's view comes from nbdsh; the exact FUA and cache levels
# (none=0/emulate=1/native=2) from a log filter placed in front of ours.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# caps_of [nbdkit args]  -> "flush fua mc cache fastzero min pref max logfua logcache"
caps_of() {
    rm -f "$tmp/log"
    nbdkit_captive --filter=log --filter="$FILTER" "$@" logfile="$tmp/log" --run '
        nbdsh -u "$uri" -c "
print(int(h.can_flush()), int(h.can_fua()), int(h.can_multi_conn()),
      int(h.can_cache()), int(h.can_fast_zero()),
      h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED),
      h.get_block_size(nbd.SIZE_MAXIMUM), end=\" \")
"' >"$tmp/caps" 2>"$tmp/err" || { cat "$tmp/err" >&2; echo "ERROR"; return 0; }
    local c f
    c=$(grep -m1 ' Connect ' "$tmp/log")
    f=$(sed -n 's/.* fua=\([0-9]\).*/\1/p' <<<"$c")
    local ca
    ca=$(sed -n 's/.* cache=\([0-9]\).*/\1/p' <<<"$c")
    echo "$(cat "$tmp/caps")$f $ca"
}

# check DESCRIPTION EXPECTED [nbdkit args]
check() {
    local desc=$1 want=$2; shift 2
    local got
    got=$(caps_of "$@")
    if [ "$got" = "$want" ]; then
        ok "$desc: $got"
    else
        bad "$desc:
        want (flush fua multi_conn cache fast_zero min pref max fua-level cache-level) $want
        got                                                                          $got"
    fi
}

# An eval plugin: 1M of zeroes, writes discarded; capabilities from args.
evalp() {   # evalp FLUSH(0|3) FUA(none|emulate|native) MC(0|3) [BLOCKSIZE]
    local args=(eval get_size='echo 1M'
        pread='dd if=/dev/zero count=$3 iflag=count_bytes status=none'
        pwrite='cat >/dev/null' can_write='exit 0'
        can_flush="exit $1" flush='exit 0'
        can_fua="echo $2" can_multi_conn="exit $3")
    if [ $# -ge 4 ]; then args+=(block_size="echo $4"); fi
    printf '%s\n' "${args[@]}"
}
mapfile_evalp() { local -n arr=$1; shift; mapfile -t arr < <(evalp "$@"); }

NOBS="1 65536 4294967295"     # plugin sets no block size: 64K cache blocks

# plugin: flush fua mc      wb expectations / wt / unsafe
#                           flush fua mc cache fz
for mode in writeback writethrough unsafe; do
    # P1: no flush, no FUA, no multi-conn
    mapfile_evalp p 3 none 3
    case $mode in
        writeback)    want="0 0 1 1 1 $NOBS 0 2" ;;
        writethrough) want="0 0 0 1 1 $NOBS 0 2" ;;
        unsafe)       want="1 1 1 1 1 $NOBS 2 2" ;;
    esac
    check "$mode, plugin flush=no fua=none mc=no" "$want" "${p[@]}" cache=$mode

    # P2: flush, no FUA, multi-conn
    mapfile_evalp p 0 none 0
    case $mode in
        writeback)    want="1 0 1 1 1 $NOBS 0 2" ;;
        writethrough) want="1 0 1 1 1 $NOBS 0 2" ;;
        unsafe)       want="1 1 1 1 1 $NOBS 2 2" ;;
    esac
    check "$mode, plugin flush=yes fua=none mc=yes" "$want" "${p[@]}" cache=$mode

    # P3: flush, emulated FUA, no multi-conn
    mapfile_evalp p 0 emulate 3
    case $mode in
        writeback)    want="1 1 1 1 1 $NOBS 1 2" ;;
        writethrough) want="1 1 0 1 1 $NOBS 1 2" ;;
        unsafe)       want="1 1 1 1 1 $NOBS 2 2" ;;
    esac
    check "$mode, plugin flush=yes fua=emulate mc=no" "$want" "${p[@]}" cache=$mode

    # P4: flush, native FUA, multi-conn
    mapfile_evalp p 0 native 0
    case $mode in
        writeback)    want="1 1 1 1 1 $NOBS 2 2" ;;
        writethrough) want="1 1 1 1 1 $NOBS 2 2" ;;
        unsafe)       want="1 1 1 1 1 $NOBS 2 2" ;;
    esac
    check "$mode, plugin flush=yes fua=native mc=yes" "$want" "${p[@]}" cache=$mode

    # P5: flush, native FUA, no multi-conn
    mapfile_evalp p 0 native 3
    case $mode in
        writeback)    want="1 1 1 1 1 $NOBS 2 2" ;;
        writethrough) want="1 1 0 1 1 $NOBS 2 2" ;;
        unsafe)       want="1 1 1 1 1 $NOBS 2 2" ;;
    esac
    check "$mode, plugin flush=yes fua=native mc=no" "$want" "${p[@]}" cache=$mode

    # memory plugin (flush, native FUA, multi-conn) behind the fua filter
    for fm in none emulate native; do
        case $fm in none) lvl=0; cf=0 ;; emulate) lvl=1; cf=1 ;; native) lvl=2; cf=1 ;; esac
        case $mode in
            unsafe) want="1 1 1 1 1 $NOBS 2 2" ;;
            *)      want="1 $cf 1 1 1 $NOBS $lvl 2" ;;
        esac
        # nbdkit 1.32 spells fuamode=none as no fuamode at all
        fa=(); [ $fm = none ] || fa=(fuamode=$fm)
        check "$mode, memory + fua filter fuamode=$fm" "$want" \
            --filter=fua memory 1M "${fa[@]}" cache=$mode
    done
done

# ---- block size
# plugin 512/4K/1M: preferred raised to 64K (max allows)
mapfile_evalp p 0 native 0 "512 4K 1M"
check "block size: plugin 512/4K/1M" "1 1 1 1 1 512 65536 1048576 2 2" "${p[@]}"
# plugin 512/4K/32K: max < block size, preferred not raised
mapfile_evalp p 0 native 0 "512 4K 32K"
check "block size: plugin 512/4K/32K" "1 1 1 1 1 512 4096 32768 2 2" "${p[@]}"
# plugin 4K/128K/1M: preferred already above the block size
mapfile_evalp p 0 native 0 "4K 128K 1M"
check "block size: plugin 4K/128K/1M" "1 1 1 1 1 4096 131072 1048576 2 2" "${p[@]}"
# plugin 1/64K/64K: max == block size still raises (no-op)
mapfile_evalp p 0 native 0 "1 512 64K"
check "block size: plugin 1/512/64K" "1 1 1 1 1 1 65536 65536 2 2" "${p[@]}"
# no plugin constraints, larger cache blocks
mapfile_evalp p 0 native 0
check "block size: none, cache-min-block-size=1M" "1 1 1 1 1 1 1048576 4294967295 2 2" \
    "${p[@]}" cache-min-block-size=1M
check "block size: none, cache-min-block-size=4K" "1 1 1 1 1 1 4096 4294967295 2 2" \
    "${p[@]}" cache-min-block-size=4K
mapfile_evalp p 0 native 0 "512 4K 1M"
check "block size: plugin 512/4K/1M, cache-min-block-size=256K" "1 1 1 1 1 512 262144 1048576 2 2" \
    "${p[@]}" cache-min-block-size=256K
check "block size: plugin 512/4K/1M, cache-min-block-size=2M" "1 1 1 1 1 512 4096 1048576 2 2" \
    "${p[@]}" cache-min-block-size=2M

finish
