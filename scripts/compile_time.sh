#!/usr/bin/env bash
# How long one translation unit takes to compile with the library, for the
# table in docs/compile_time.md: a TU that orthogonalizes, one that steps the
# optimizer, one that computes the exact SVD polar factor; each with
# <muon/muon.hpp>, with the narrower header, and with the extern templates of
# <muon/extern_templates.hpp> (whose one instantiating TU is timed too).
#
#   bash scripts/compile_time.sh            # CXX (default g++), FLAGS (default -O2), REPEAT (3)
#
# Each figure is the best of REPEAT runs of `$CXX -c`, wall-clock seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
cxx=${CXX:-g++}
flags=${FLAGS:--O2}
repeat=${REPEAT:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
eigen=$(pkg-config --cflags eigen3 2>/dev/null || echo -I/usr/include/eigen3)
inc="-std=c++17 -Iinclude ${eigen//-I/-isystem } -pthread"

write() {  # name, header, body (uses G, O)
  cat >"$work/$1.cpp" <<EOF
#include <$2>
$4
int main() {
  Eigen::MatrixXf G = Eigen::MatrixXf::Random(64, 128);
  $3
  return 0;
}
EOF
}
ORTHO='Eigen::MatrixXf O = muon::orthogonalize(G); return O(0, 0) > 2;'
OPT='std::vector<float> w(64 * 128), g(64 * 128); muon::Optimizer<float> opt;
  opt.add_param("w", {w.data(), {64, 128}}, {g.data(), {64, 128}}); opt.step();'
SVD='Eigen::MatrixXd P = muon::reference::polar_svd(G); return P(0, 0) > 2;'
EXT='#include <muon/extern_templates.hpp>'
write ortho_umbrella muon/muon.hpp "$ORTHO" ""
write ortho_narrow muon/orthogonalize.hpp "$ORTHO" ""
write ortho_extern muon/orthogonalize.hpp "$ORTHO" "$EXT"
write opt_umbrella muon/muon.hpp "$OPT" "#include <vector>"
write opt_narrow muon/optimizer.hpp "$OPT" "#include <vector>"
write opt_extern muon/optimizer.hpp "$OPT" "#include <vector>
$EXT"
write svd_umbrella muon/muon.hpp "$SVD" ""
write svd_narrow muon/reference.hpp "$SVD" ""
write svd_extern muon/reference.hpp "$SVD" "$EXT"
printf '#define MUON_INSTANTIATE_TEMPLATES\n#include <muon/extern_templates.hpp>\n' >"$work/instances.cpp"

best() {  # file
  local b=""
  for ((r = 0; r < repeat; ++r)); do
    local s=$(date +%s.%N)
    # shellcheck disable=SC2086
    $cxx $flags $inc -c "$work/$1.cpp" -o "$work/$1.o"
    local t=$(echo "$(date +%s.%N) - $s" | bc)
    if [[ -z $b ]] || (($(echo "$t < $b" | bc))); then b=$t; fi
  done
  printf '%.1f' "$b"
}

echo "compiler: $($cxx --version | head -1); flags: $flags; best of $repeat"
printf '%-14s %12s %12s %16s\n' "TU uses" "muon.hpp" "narrow" "narrow + extern"
for what in ortho opt svd; do
  printf '%-14s %12s %12s %16s\n' "$what" "$(best ${what}_umbrella)" "$(best ${what}_narrow)" \
    "$(best ${what}_extern)"
done
echo "the instantiating TU (once per program): $(best instances) s"
# The extern TUs must link against the instances.
$cxx $flags $inc "$work/opt_extern.o" "$work/instances.o" -o "$work/opt_extern" && "$work/opt_extern"
$cxx $flags $inc "$work/svd_extern.o" "$work/instances.o" -o "$work/svd_extern" && "$work/svd_extern" || true
echo "linked and ran the extern builds"
