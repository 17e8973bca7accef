#!/usr/bin/env bash
# Run Kenning's W1–W5 beside the peers (Edda, DBOS; Temporal optional) and print the table
# with Kenning's ratio to each peer.
#
#   bash bench/run.sh                          # 3 repeats, Edda + DBOS + Kenning, W1..W5
#   REPEATS=1 bash bench/run.sh                # one quick pass
#   WITH_TEMPORAL=1 bash bench/run.sh          # add Temporal: about +20 min for 3 repeats
#   KENNING_REF=HEAD bash bench/run.sh         # run Kenning from a snapshot of a commit
#   ENGINES=kenning WORKLOADS="W1 W2" REPEATS=1 bash bench/run.sh   # any run_all.sh knob
#
# Needs ../shared/bench next to this repository (or $KENNING_BENCH_SHARED) and the repo's
# venv (.venv, Kenning installed editable with the postgres extra). Results are appended to
# bench/results/kenning-<UTC time>.jsonl unless OUT is set; each Kenning line records the
# engine code it ran in "engine_source".
#
# KENNING_REF: the engine is taken from `git archive <ref> sdk` into a temporary directory
# put first on PYTHONPATH, so edits to the working tree during the ~20 minute run do not mix
# engine versions between repeats. Without it the working tree's sdk/ runs (the editable
# install), and lines say "<commit>+dirty" when sdk/ had uncommitted changes.
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${KENNING_BENCH_SHARED:-$(cd "$REPO/.." && pwd)/shared/bench}
PEERS=$SHARED/peers
VENV_PY=${VENV_PY:-$REPO/.venv/bin/python}

bash "$PEERS/setup.sh"   # peers' venv (~/.cache/kenning-bench-peers), PostgreSQL, role for us

engines=${ENGINES:-"edda dbos kenning"}
if [ "${WITH_TEMPORAL:-0}" = 1 ]; then
  engines="$engines temporal"
fi
driver="$VENV_PY $REPO/bench/kenning_bench.py"
if [ -n "${KENNING_REF:-}" ]; then
  commit=$(git -C "$REPO" rev-parse --short "$KENNING_REF")
  snap=$(mktemp -d "${TMPDIR:-/tmp}/kenning-bench-$commit-XXXXXX")
  trap 'rm -rf "$snap"' EXIT
  git -C "$REPO" archive "$commit" sdk | tar -x -C "$snap"
  export KENNING_BENCH_COMMIT=$commit
  driver="env PYTHONPATH=$snap/sdk $driver"
  echo "# kenning from a snapshot of $commit in $snap" >&2
fi
export KENNING_BENCH_SHARED=$SHARED
export ENGINE_kenning=$driver
export ENGINES=$engines
export RATIO=${RATIO:-kenning}
export OUT=${OUT:-$REPO/bench/results/kenning-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
mkdir -p "$(dirname "$OUT")"
echo "# engines: $ENGINES; repeats: ${REPEATS:-3}; workloads: ${WORKLOADS:-W1 W2 W3 W4 W5}" >&2
echo "# out: $OUT" >&2
bash "$PEERS/run_all.sh"
