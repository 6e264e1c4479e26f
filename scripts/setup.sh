#!/usr/bin/env bash
# Create .venv with a CPU PyTorch and the harness (editable). Safe to run again.
#   bash scripts/setup.sh         what `harness run` needs (the README's first command)
#   bash scripts/setup.sh dev     also lm-eval, Triton's CPU interpreter, Ray and the test and lint tools (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = dev ]; then
  # ray: the --launcher ray test runs on a local Ray instance (about 35 s to install, 80 MB). The tests start many
  # Python processes: pip byte-compiles everything once, at install time
  package=".[dev,ray]" compile=""
else
  # pip byte-compiles every module it installs (28 s of a 2-core machine's setup for torch and the rest); Python
  # compiles the few it imports when it first needs them
  package="." compile="--no-compile"
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned, so that nothing pulls a multi-GB CUDA build on a CPU machine; on a GPU machine
# install the CUDA build of your choice before running this.
python -m pip install -q $compile "torch==2.13.0" || python -m pip install -q $compile torch
python -m pip install -q $compile -e "$package"
