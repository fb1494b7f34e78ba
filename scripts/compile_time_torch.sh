#!/usr/bin/env bash
# What <muon/torch.hpp> costs a translation unit, and what
# <muon/torch_extern_templates.hpp> saves (docs/compile_time.md, "The libtorch
# adapter"). One small training-step file (make_hybrid, a step, torch::save) is
# compiled four ways: with libtorch alone (torch::optim::AdamW instead: the
# floor), with <muon/torch.hpp>, with <muon/torch.hpp> and the core's
# <muon/extern_templates.hpp>, and with <muon/torch_extern_templates.hpp>; then
# the one file that defines the instances, and the extern build is linked and run.
#
#   bash scripts/compile_time_torch.sh      # CXX (default g++), FLAGS (default -O2), REPEAT (3)
#
# Each figure is the best of REPEAT compiles, in CPU seconds (user + system) of
# `$CXX -c`: on a shared machine CPU time varies less than wall-clock time.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cxx=${CXX:-g++}
flags=${FLAGS:--O2}
repeat=${REPEAT:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
eigen=$(pkg-config --cflags eigen3 2>/dev/null || echo -I/usr/include/eigen3)
torch_api=/usr/include/torch/csrc/api/include
inc="-std=c++17 -I$root/include ${eigen//-I/-isystem } -isystem $torch_api -pthread"
libs=(-ltorch -ltorch_cpu -lc10 -pthread)

body='int main() {
  torch::manual_seed(0);
  torch::nn::Linear hidden(16, 32), classifier(32, 4);
  torch::OrderedDict<std::string, torch::Tensor> named;
  named.insert("hidden.weight", hidden->weight);
  named.insert("classifier.weight", classifier->weight);
  auto opt = muon::torch::make_hybrid(named, muon::torch::MuonOptions(0.02));
  classifier(torch::relu(hidden(torch::randn({8, 16})))).sum().backward();
  opt.step();
  std::ostringstream out;
  torch::save(opt, out);
  return out.str().empty() ? 1 : 0;
}'
write() {  # name, includes
  printf '%b\n#include <sstream>\n#include <string>\n%s\n' "$2" "$body" >"$work/$1.cpp"
}
write plain '#include <torch/torch.h>\n#include <muon/torch.hpp>'
write core_extern '#include <torch/torch.h>\n#include <muon/torch.hpp>\n#include <muon/extern_templates.hpp>'
write torch_extern '#include <torch/torch.h>\n#include <muon/torch_extern_templates.hpp>'
cat >"$work/libtorch_only.cpp" <<'EOF'
#include <torch/torch.h>

#include <sstream>

int main() {
  torch::manual_seed(0);
  torch::nn::Linear hidden(16, 32), classifier(32, 4);
  torch::optim::AdamW opt({hidden->weight, classifier->weight}, torch::optim::AdamWOptions(0.02));
  classifier(torch::relu(hidden(torch::randn({8, 16})))).sum().backward();
  opt.step();
  std::ostringstream out;
  torch::save(opt, out);
  return out.str().empty() ? 1 : 0;
}
EOF
printf '%s\n' '#define MUON_INSTANTIATE_TORCH' '#define MUON_INSTANTIATE_OPTIMIZERS' \
  '#define MUON_INSTANTIATE_PRODUCTS' '#include <muon/torch_extern_templates.hpp>' \
  >"$work/instances.cpp"

best() {  # file: the best CPU time of $repeat compiles
  local b="" t
  for ((r = 0; r < repeat; ++r)); do
    t=$( { TIMEFORMAT='%U %S'; time $cxx $flags $inc -c "$work/$1.cpp" -o "$work/$1.o"; } 2>&1 |
        awk '{ print $1 + $2 }')
    if [[ -z $b ]] || (($(echo "$t < $b" | bc))); then b=$t; fi
  done
  printf '%.1f' "$b"
}

echo "compiler: $($cxx --version | head -1); flags: $flags; best of $repeat; CPU seconds"
floor=$(best libtorch_only)
plain=$(best plain)
core=$(best core_extern)
adapter=$(best torch_extern)
printf '%-52s %6s\n' "libtorch alone (torch::optim::AdamW)" "$floor" \
  "<muon/torch.hpp>" "$plain" \
  "<muon/torch.hpp> + <muon/extern_templates.hpp>" "$core" \
  "<muon/torch_extern_templates.hpp>" "$adapter"
echo "per file: $(echo "scale=2; $plain / $adapter" | bc)x less CPU with the adapter extern;" \
  "the adapter's own share $(echo "$plain - $floor" | bc) s -> $(echo "$adapter - $floor" | bc) s"
echo "the instantiating file (once per program): $(best instances) s"
$cxx $flags $inc "$work/torch_extern.o" "$work/instances.o" -o "$work/torch_extern" "${libs[@]}"
"$work/torch_extern" >/dev/null
echo "linked and ran the extern build"
