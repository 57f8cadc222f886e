#!/usr/bin/env bash
# Runs every fuzz target for a short, bounded time (FUZZ_SECONDS, default 30 s each) and fails on
# the first crash, leak, timeout or out-of-memory. Called from .ci/run; runs from any directory.
#
# cargo fuzz needs nightly flags (-Zsanitizer, sancov); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. It is set for this script's cargo commands only.
set -euo pipefail

cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-30}"
targets=(frame message overlay source_session upload_session browse_session)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    dirs=("corpus/$t")
    if [ -d "seeds/$t" ]; then
        dirs+=("seeds/$t")
    fi
    echo "fuzz: $t for ${seconds}s"
    # New inputs go to corpus/$t (ignored by git); seeds/$t is read only.
    cargo fuzz run "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a crash"
