#!/usr/bin/env bash
# Every check of a submission: lint, types, layer rules, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== import-linter (layers of DESIGN.md)"
.venv/bin/lint-imports
echo "== pytest"
.venv/bin/python -m pytest "$@"
