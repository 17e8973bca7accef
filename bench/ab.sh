#!/usr/bin/env bash
# Kenning against Kenning: two commits' engines on the same workloads, interleaved, each run on
# a fresh PostgreSQL database, with the same driver (this checkout's bench/kenning_bench.py).
#
#   bash bench/ab.sh 59307fc HEAD                       # W1 W2 W3 W4, 3 repeats
#   WORKLOADS="W1" N=3000 REPEATS=5 bash bench/ab.sh 59307fc HEAD
#   OUT=bench/results/ab.jsonl bash bench/ab.sh A B     # default: bench/results/ab-<A>-<B>.jsonl
#
# Each engine is `git archive <ref> sdk` in a temporary directory put first on PYTHONPATH; each
# line's "engine_source" is its commit. Needs the packaged PostgreSQL running (run.sh's
# setup starts it) and a role for the current user. Prints one line per run and, at the end,
# the median of each metric per engine and the ratio B / A.
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV_PY=${VENV_PY:-$REPO/.venv/bin/python}
SOCKET=${PGSOCKET:-/var/run/postgresql}
a=$(git -C "$REPO" rev-parse --short "${1:?usage: ab.sh REF_A REF_B}")
b=$(git -C "$REPO" rev-parse --short "${2:?usage: ab.sh REF_A REF_B}")
workloads=${WORKLOADS:-"W1 W2 W3 W4"}
repeats=${REPEATS:-3}
out=${OUT:-$REPO/bench/results/ab-$a-$b.jsonl}
snap=$(mktemp -d "${TMPDIR:-/tmp}/kenning-ab-XXXXXX")
trap 'rm -rf "$snap"' EXIT
for ref in "$a" "$b"; do
  mkdir -p "$snap/$ref"
  git -C "$REPO" archive "$ref" sdk | tar -x -C "$snap/$ref"
done
n_arg=()
if [ -n "${N:-}" ]; then n_arg=(--n "$N"); fi
for r in $(seq 1 "$repeats"); do
  for w in $workloads; do
    for ref in "$a" "$b"; do
      db="ab_$(echo "$w" | tr 'A-Z' 'a-z')_${ref}_${r}_$$"
      createdb -h "$SOCKET" "$db"
      KENNING_BENCH_COMMIT=$ref PYTHONPATH="$snap/$ref/sdk" "$VENV_PY" "$REPO/bench/kenning_bench.py" \
        "$w" "${n_arg[@]}" --db "postgresql://$(id -un)@/$db?host=$SOCKET" --json "$out" \
        >/dev/null 2>"$snap/err" || { cat "$snap/err" >&2; dropdb -h "$SOCKET" "$db"; exit 1; }
      dropdb -h "$SOCKET" "$db"
      echo "# repeat $r $w $ref: $(tail -1 "$out" | cut -c1-160)..." >&2
    done
  done
done
"$VENV_PY" - "$out" "$a" "$b" <<'EOF'
import json
import statistics
import sys

path, a, b = sys.argv[1:]
runs: dict[tuple[str, str], list[dict[str, object]]] = {}
for line in open(path):
    doc = json.loads(line)
    runs.setdefault((doc["workload"], doc.get("engine_source", "?")), []).append(doc)
metrics = ("runs_per_s", "p50_ms", "p99_ms", "p50_late_ms", "p99_late_ms", "kib_per_run",
           "start_s")
print(f"| workload | metric | {a} median [min–max] | {b} median [min–max] | {b} / {a} |")
print("|---|---|---|---|---|")
for workload in sorted({w for w, _ in runs}):
    for metric in metrics:
        cols = []
        for ref in (a, b):
            values = [float(d[metric]) for d in runs.get((workload, ref), [])
                      if isinstance(d.get(metric), (int, float))]
            cols.append(values)
        if not all(cols):
            continue
        med = [statistics.median(v) for v in cols]
        cells = [f"{m:g} [{min(v):g}–{max(v):g}]" for m, v in zip(med, cols)]
        print(f"| {workload} | {metric} | {cells[0]} | {cells[1]} | {med[1] / med[0]:.2f} |")
EOF
