#!/usr/bin/env bash
# Set up envlock with its test tools in .venv, then run the linters, the type checker and the whole test suite.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" test,torch,mlflow,wandb,ray
cd "$root"
echo "== ruff"; ruff check envlock tests benchmarks
echo "== mypy"; mypy
echo "== pytest"; python -m pytest "$@"
