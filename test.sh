#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: platform setup (idempotent), build, tests.
# Ends with one line "N passed, N failed[, N skipped]" (CI reads it).
set -uo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --mpi || exit 1   # --mpi: the data-parallel tests run under mpirun
results=$(mktemp -d)
dotnet test tests/PeftSharp.Tests/PeftSharp.Tests.csproj -c Release \
  --logger "trx;LogFileName=results.trx" --results-directory "$results" "$@"
rc=$?
trx="$results/results.trx"
if [ -f "$trx" ]; then
  counters=$(grep -o '<Counters [^>]*>' "$trx" | head -1)
  get() { echo "$counters" | grep -o " $1=\"[0-9]*\"" | grep -o '[0-9]*'; }
  passed=$(get passed); failed=$(get failed); total=$(get total); executed=$(get executed)
  skipped=$(( ${total:-0} - ${executed:-0} ))
  echo "${passed:-0} passed, ${failed:-0} failed, ${skipped} skipped"
else
  echo "0 passed, 1 failed"
  [ $rc -eq 0 ] && rc=1
fi
exit $rc
