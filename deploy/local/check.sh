#!/usr/bin/env bash
# Static checks: formatting, lint, types (run after deploy/local/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/ruff format --diff .
.venv/bin/ruff check .
.venv/bin/mypy minewatch pipelines nsl_models
