#!/usr/bin/env bash
# Lint: ruff (lint + format) over the Python, clang-format over the C++/CUDA, one line width for
# both (pyproject.toml [tool.ruff], .clang-format). Installs the pinned tools into the active env
# unless they are there already at those versions. Fix locally with:
#   ruff check --fix . && ruff format . && git ls-files '*.cpp' '*.h' '*.cu' '*.cuh' | xargs clang-format -i
set -euo pipefail
cd "$(dirname "$0")/.."

RUFF_VERSION=0.17.6
CLANG_FORMAT_VERSION=23.1.3
if [ "$(ruff --version 2>/dev/null)" != "ruff $RUFF_VERSION" ]; then
  python -m pip install -q "ruff==$RUFF_VERSION"
fi
if ! clang-format --version 2>/dev/null | grep -q "version $CLANG_FORMAT_VERSION"; then
  python -m pip install -q "clang-format==$CLANG_FORMAT_VERSION"
fi

status=0
ruff check . || status=1
ruff format --check . || status=1
git ls-files -z '*.cpp' '*.h' '*.cu' '*.cuh' | xargs -0 clang-format --dry-run -Werror || status=1
if [ "$status" -ne 0 ]; then
  echo "lint: failed (fix commands at the top of .ci/lint.sh)" >&2
fi
exit "$status"
