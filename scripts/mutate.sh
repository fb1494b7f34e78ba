#!/usr/bin/env bash
# Mutation testing: plants each bug listed in tests/mutations.txt, one at a
# time, in a scratch copy of the tree, rebuilds only the test programs that
# entry names, runs them, and reports whether the tests caught the bug.
#
#   bash scripts/mutate.sh               # every mutation
#   bash scripts/mutate.sh gram-restart  # only the mutations whose id contains a word
#   MUTATE_JOBS=1 bash scripts/mutate.sh # one worker (default: nproc, at most 4)
#
# A mutation is caught when a listed test program fails. Exit status: 0 when
# every mutation was caught, 1 otherwise (a survivor, a stale pattern, a
# mutant that does not compile, or a failing unmutated baseline).
#
# The list format and how to add an entry are described in docs/testing.md and
# at the top of tests/mutations.txt. Scratch copies and build trees live under
# build/mutate/ (MUTATE_DIR); they are reused, so a second run rebuilds only
# what changed. The build uses clang++ when installed (about twice as fast to
# compile as g++ here) at -O0 (half the time of -O1: numerically heavy test
# programs are run with a filter in the list), and ccache when installed:
# the workers' identical trees then share one cache, and restoring a file
# after its mutation is a cache hit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
list="$root/tests/mutations.txt"
work=${MUTATE_DIR:-$root/build/mutate}
[[ $work == /* ]] || work=$root/$work  # relative to the repository; ccache's CCACHE_BASEDIR must be absolute
workers=${MUTATE_JOBS:-$(nproc)}
((workers > 4)) && workers=4
((workers < 1)) && workers=1
filter=("$@")

command -v perl >/dev/null || { echo "mutate: needs perl" >&2; exit 1; }
compiler=(-DCMAKE_CXX_COMPILER=g++)
command -v clang++ >/dev/null && compiler=(-DCMAKE_CXX_COMPILER=clang++)
if command -v ccache >/dev/null; then
  compiler+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  # Paths below $work are hashed relative to it, so w0/ and w1/ share entries.
  export CCACHE_BASEDIR=$work CCACHE_NOHASHDIR=1
fi

# ---- parse the list: blocks of "key: value" lines, blank-line separated -------
ids=() files=() finds=() repls=() tests=()
parse() {
  local id="" file="" find="" repl="" test="" line key value
  flush() {
    if [[ -n $id ]]; then
      if [[ -z $file || -z $find || -z $test ]]; then
        echo "mutate: entry '$id' needs file, find and tests" >&2
        exit 1
      fi
      local keep=1
      if ((${#filter[@]})); then
        keep=0
        for f in "${filter[@]}"; do [[ $id == *"$f"* ]] && keep=1; done
      fi
      if ((keep)); then
        ids+=("$id") files+=("$file") finds+=("$find") repls+=("$repl") tests+=("$test")
      fi
    fi
    id="" file="" find="" repl="" test=""
  }
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*# ]] && continue
    if [[ -z ${line//[[:space:]]/} ]]; then flush; continue; fi
    key=${line%%:*}
    value=${line#*: }
    [[ $value == "$line" ]] && value=""
    case $key in
      id) id=$value ;;
      file) file=$value ;;
      find) find=$value ;;
      replace) repl=$value ;;
      tests) test=$value ;;
      why) ;;
      *) echo "mutate: unknown key '$key' in $list" >&2; exit 1 ;;
    esac
  done <"$list"
  flush
}
parse
count=${#ids[@]}
((count)) || { echo "mutate: no mutation matches '${filter[*]}'" >&2; exit 1; }
((workers > count)) && workers=$count

# ---- scratch copies (tracked and untracked, not ignored files) ----------------
mkdir -p "$work"
sync_copy() {  # dst. Only files whose content changed are copied (with a new
  # mtime), so unchanged files do not rebuild and changed ones always do (a
  # copy keeping an older mtime than the last scratch build would be missed).
  local dst=$1 f
  mkdir -p "$dst"
  (cd "$root" && git ls-files -co --exclude-standard -z) |
    while IFS= read -r -d '' f; do
      [[ -f $root/$f ]] || continue
      cmp -s "$root/$f" "$dst/$f" 2>/dev/null && continue
      mkdir -p "$dst/$(dirname "$f")"
      cp "$root/$f" "$dst/$f"
    done
}
prog_of() { local p=${1%%\[*}; echo "${p%@*}"; }  # "test_dist@3[tag]" -> test_dist
all_targets() {  # every program named in the selected entries
  local t
  for t in "${tests[@]}"; do
    for p in $t; do prog_of "$p"; done
  done | sort -u
}
mapfile -t targets < <(all_targets)
# The distinct "prog[filter]" specs: what the baseline runs.
mapfile -t specs < <(for t in "${tests[@]}"; do for p in $t; do echo "$p"; done; done | sort -u)
# "prog@N" runs prog under mpiexec with N ranks: the build then needs MPI.
mpi=()
[[ " ${specs[*]}" == *@* ]] && mpi=(-DMUON_ENABLE_MPI=ON)
# test_cuda's [host] tests run the kernels' per-thread code on the CPU: an
# entry naming test_cuda builds with CUDA on (compiled only; nvcc needed).
cuda=(-DMUON_ENABLE_CUDA=OFF)
if [[ " ${targets[*]} " == *" test_cuda "* ]]; then
  command -v nvcc >/dev/null || { echo "mutate: test_cuda entries need nvcc" >&2; exit 1; }
  cuda=(-DMUON_ENABLE_CUDA=ON -DMUON_CUDA_ARCHITECTURES="${MUON_CUDA_ARCHITECTURES:-90}")
fi

setup() {  # worker index
  local w=$1 src="$work/w$1/src" bld="$work/w$1/build"
  sync_copy "$src"
  (cd "$work/w$w" && cmake -S src -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CXX_FLAGS_RELEASE="-O0 -DNDEBUG" -DMUON_BUILD_BENCHMARKS=OFF \
      -DMUON_BUILD_EXAMPLES=OFF "${cuda[@]}" -DMUON_INSTALL=OFF "${compiler[@]}" \
      ${mpi[@]+"${mpi[@]}"}) \
      >"$work/configure$w.log" 2>&1 || { echo "mutate: configure failed ($work/configure$w.log)" >&2; return 1; }
}

run_tests() {  # build dir, "prog[filter] prog ..."; returns nonzero when any fails
  local bld=$1 spec failed=0
  for spec in $2; do
    local prog tag="" run=(timeout 300) dir="$bld/tests"
    prog=$(prog_of "$spec")
    [[ -x $dir/$prog ]] || dir="$bld/tests/cuda"  # test_cuda
    [[ $spec == *"["* ]] && tag="[${spec#*\[}"
    if [[ ${spec%%\[*} == *@* ]]; then
      # Under MPI (as ctest runs test_dist_npN; Open MPI refuses root and
      # more ranks than cores unless told); a mutant that hangs the ranks
      # is caught by the shorter timeout.
      local head=${spec%%\[*}
      run=(env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
           OMPI_MCA_rmaps_base_oversubscribe=1 timeout 120 mpiexec -n "${head##*@}")
    fi
    if [[ -n $tag ]]; then
      # NoTests: a filter that matches nothing fails (the baseline then stops
      # the run) instead of passing and letting every mutant "survive".
      (cd "$dir" && "${run[@]}" "./$prog" --warn NoTests "$tag") >/dev/null 2>&1 || failed=1
    else
      (cd "$dir" && "${run[@]}" "./$prog") >/dev/null 2>&1 || failed=1
    fi
  done
  return $failed
}

worker() {  # worker index; handles entries i with i % workers == index
  local w=$1 src="$work/w$1/src" bld="$work/w$1/build" out="$work/result$1.txt" i
  : >"$out"
  for ((i = w; i < count; i += workers)); do
    local id=${ids[i]} file=${files[i]} spec=${tests[i]}
    local path="$src/$file" progs=() status detail=""
    for p in $spec; do progs+=("$(prog_of "$p")"); done
    if [[ ! -f $path ]]; then
      echo "$id|stale|no file $file" >>"$out"
      continue
    fi
    cp -p "$path" "$path.orig"
    if ! FIND=${finds[i]} REPL=${repls[i]} perl -0777 -i -pe '
          BEGIN { $f = $ENV{FIND}; $r = $ENV{REPL}; s/\\n/\n/g for ($f, $r); }
          $n = () = /\Q$f\E/g;
          if ($n != 1) { print STDERR "matches $n times\n"; exit 3; }
          s/\Q$f\E/$r/;' "$path" 2>"$work/perl$w.log"; then
      mv "$path.orig" "$path"
      echo "$id|stale|pattern in $file $(cat "$work/perl$w.log")" >>"$out"
      continue
    fi
    if ! cmake --build "$bld" --target "${progs[@]}" -j 1 >"$work/build_$id.log" 2>&1; then
      status=invalid detail="the mutant does not compile ($work/build_$id.log)"
    elif run_tests "$bld" "$spec"; then
      status=survived detail="$spec passed"
    else
      status=caught detail="$spec"
      rm -f "$work/build_$id.log"
    fi
    mv "$path.orig" "$path"
    touch "$path"  # newer than the mutant's objects: the next build restores them
    echo "$id|$status|$detail" >>"$out"
    echo "  $status  $id" >&2
  done
}

start=$(date +%s)
echo "mutate: $count mutation(s), $workers worker(s), scratch in $work"
for ((w = 0; w < workers; ++w)); do setup "$w"; done
# Baseline: the unmutated tests must pass, or nothing below means anything.
echo "mutate: building and running the unmutated tests (${targets[*]})"
# Worker 0 builds with every core; the others then hit ccache (same sources).
for ((w = 0; w < workers; ++w)); do
  cmake --build "$work/w$w/build" --target "${targets[@]}" -j "$(nproc)" >"$work/baseline$w.log" 2>&1 ||
    { tail -30 "$work/baseline$w.log" >&2; echo "mutate: baseline build failed" >&2; exit 1; }
  run_tests "$work/w$w/build" "${specs[*]}" || {
    echo "mutate: the unmutated tests fail in $work/w$w/build; fix them first" >&2
    exit 1
  }
done

pids=()
for ((w = 0; w < workers; ++w)); do
  worker "$w" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done

caught=0 total=0 bad=0
printf '\n%-34s %-9s %s\n' "mutation" "result" "detail"
for ((w = 0; w < workers; ++w)); do cat "$work/result$w.txt"; done | sort |
  while IFS='|' read -r id status detail; do printf '%-34s %-9s %s\n' "$id" "$status" "$detail"; done
while IFS='|' read -r _ status _; do
  total=$((total + 1))
  [[ $status == caught ]] && caught=$((caught + 1)) || bad=$((bad + 1))
done < <(for ((w = 0; w < workers; ++w)); do cat "$work/result$w.txt"; done)
elapsed=$(($(date +%s) - start))
echo
echo "mutate: caught $caught of $total (score $((total ? 100 * caught / total : 0)) %) in ${elapsed}s"
((bad == 0))
