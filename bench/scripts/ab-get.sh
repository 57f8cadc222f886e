#!/bin/bash
# Side-by-side A/B of two builds of `leaf get` over loopback (issue 18's measurements): each
# build gets its own super-peer and source leaf sharing the same file, and the two downloads
# alternate, so both see the same machine at the same time. Prints, per run, the wall time,
# the downloader's CPU (user + system, from /usr/bin/time) and the source's CPU (from
# /proc/PID/stat), and the transfer time leaf get reports.
#
# usage: bench/scripts/ab-get.sh OLD_RELEASE_DIR NEW_RELEASE_DIR FILE [RUNS]
#   OLD_ENV / NEW_ENV: one VAR=value for that side's `leaf get` (optional)
# e.g.:  git worktree add /tmp/old 8191fa3 && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/oldt \
#          cargo build --release -p leaf -p superpeer)
#        bench/scripts/ab-get.sh /tmp/oldt/release target/release /tmp/share/big.bin 5
set -eu
OLD=$(realpath "$1"); NEW=$(realpath "$2"); FILE=$(realpath "$3"); RUNS=${4:-5}
W=$(mktemp -d /tmp/ab-get.XXXXXX)
cleanup() { pkill -f "$W/" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
ID=$(b3sum --no-names "$FILE")
mkdir "$W/share" && ln "$FILE" "$W/share/" 2>/dev/null || cp "$FILE" "$W/share/"
WORDS=$(basename "$FILE" | sed 's/[^A-Za-z0-9]/ /g')
start() { # side bin port
  "$2/superpeer" --listen "127.0.0.1:$3" --data-dir "$W/sp-$1" > "$W/sp-$1.log" 2>&1 &
  sleep 0.3
  "$2/leaf" --data-dir "$W/src-$1" --superpeer "127.0.0.1:$3" --listen "127.0.0.1:$(($3 + 1))" \
    share "$W/share" > "$W/src-$1.log" 2>&1 &
  for _ in $(seq 120); do
    "$2/leaf" --data-dir "$W/probe-$1" --superpeer "127.0.0.1:$3" search $WORDS --json \
      2>/dev/null | grep -q "$ID" && return 0
    sleep 1
  done
  echo "the $1 source never showed up" >&2; exit 1
}
start old "$OLD" 17200
start new "$NEW" 17300
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
SRC_old=$(pgrep -f "$W/src-old" | head -1); SRC_new=$(pgrep -f "$W/src-new" | head -1)
for r in $(seq "$RUNS"); do
  for side in old new; do
    if [ "$side" = old ]; then bin=$OLD; port=17200; src=$SRC_old; env=${OLD_ENV:-X=}
    else bin=$NEW; port=17300; src=$SRC_new; env=${NEW_ENV:-X=}; fi
    rm -rf "$W/out" "$W/cli"; mkdir "$W/out"
    before=$(cpu "$src")
    env "$env" /usr/bin/time -o "$W/t" -f "%e %U %S" "$bin/leaf" --data-dir "$W/cli" \
      --superpeer "127.0.0.1:$port" get "$ID" --out "$W/out" > "$W/get.out" 2>&1
    after=$(cpu "$src")
    read -r wall user sys < "$W/t"
    printf '%s run %d: wall %s s, leaf get CPU %.2f s, source CPU %.2f s (%s)\n' "$side" "$r" \
      "$wall" "$(echo "$user + $sys" | bc)" "$(echo "($after - $before) / 100" | bc -l)" \
      "$(grep -o 'in [0-9.]* s' "$W/get.out")"
  done
done
