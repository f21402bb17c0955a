#!/usr/bin/env bash
# Runs every fuzz target of the main module for FUZZTIME each (default 30s),
# with a short minimisation time so that a target keeps fuzzing after its
# first new inputs. A crash is written by go test under the package's
# testdata/fuzz/FuzzName, where it becomes a seed of every later run; the
# script then fails.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-30s}
MINIMIZE=${FUZZMINIMIZETIME:-2s}
fail=0
while IFS=: read -r file name; do
	pkg=./$(dirname "$file")
	echo "== $name ($pkg, $FUZZTIME)"
	if ! $GO test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$MINIMIZE" "$pkg"; then
		fail=1
	fi
done < <(grep -rHo --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+' . |
	grep -v -e '^./benchmarks/' -e '^./interop/' | sed -E 's/func //; s|^\./||' | sort)
exit $fail
