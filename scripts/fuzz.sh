#!/usr/bin/env bash
# Runs every fuzz target of the main module for FUZZTIME each (default 30s),
# with a short minimisation time so that a target keeps fuzzing after its
# first new inputs. A crash is written by go test under the package's
# testdata/fuzz/FuzzName, where it becomes a seed of every later run; the
# script then fails.
set -uo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-30s}
MINIMIZE=${FUZZMINIMIZETIME:-2s}
fail=0
while IFS=: read -r file name; do
	pkg=./$(dirname "$file")
	echo "== $name ($pkg, $FUZZTIME)"
	corpus="$pkg/testdata/fuzz/$name"
	before=$(ls "$corpus" 2>/dev/null | wc -l)
	out=$(mktemp)
	if $GO test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$MINIMIZE" "$pkg" 2>&1 | tee "$out"; then
		:
	elif [ "$(ls "$corpus" 2>/dev/null | wc -l)" -eq "$before" ] && grep -q 'context deadline exceeded' "$out"; then
		# The fuzzer's own timeout hit a worker mid-run: no input failed
		# (a failing input would have been written to $corpus).
		echo "== $name: the fuzzer stopped at its deadline mid-run; no failing input"
	else
		fail=1
	fi
	rm -f "$out"
done < <(grep -rHo --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+' . |
	grep -v -e '^./benchmarks/' -e '^./interop/' | sed -E 's/func //; s|^\./||' | sort)
exit $fail
