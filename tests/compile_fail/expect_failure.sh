#!/bin/sh
# SPDX-License-Identifier: MIT
# expect_failure.sh CXX SOURCE CASES MESSAGE [FLAGS...]
# SOURCE must compile with -DMUON_CASE=0 and must fail to compile, with a
# diagnostic containing MESSAGE, for each -DMUON_CASE=1..CASES.
cxx=$1 source=$2 cases=$3 message=$4
shift 4
log=$(mktemp) || exit 1
trap 'rm -f "$log"' EXIT
if ! "$cxx" -std=c++17 -fsyntax-only "$@" -DMUON_CASE=0 "$source" >"$log" 2>&1; then
  cat "$log"
  echo "case 0 must compile (the other cases would fail for some other reason)"
  exit 1
fi
c=1
while [ "$c" -le "$cases" ]; do
  if "$cxx" -std=c++17 -fsyntax-only "$@" -DMUON_CASE="$c" "$source" >"$log" 2>&1; then
    echo "case $c compiled; it must not"
    exit 1
  fi
  if ! grep -q "$message" "$log"; then
    cat "$log"
    echo "case $c failed without the expected message: $message"
    exit 1
  fi
  echo "case $c refused: $(grep -m1 -o "$message.*" "$log" | cut -c1-100)"
  c=$((c + 1))
done
