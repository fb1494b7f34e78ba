// SPDX-License-Identifier: MIT
// A user's MPI program on the installed package: one data-parallel step of
// muon::dist::Optimizer over MPI_COMM_WORLD (run it under mpiexec). Exit
// code 0 when every rank ends with the same weights and they moved.
#include <mpi.h>

#include <muon/distributed/mpi.hpp>
#include <muon/distributed/optimizer.hpp>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1, ok = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  {
    std::vector<float> w(16 * 8, 0.05f), dw(w.size()), b(16, 0.0f), db(b.size());
    for (std::size_t i = 0; i < dw.size(); ++i) dw[i] = float((i * 7 + std::size_t(rank)) % 13) - 6;
    for (std::size_t i = 0; i < db.size(); ++i) db[i] = float(rank + 1);
    muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
    muon::dist::Optimizer<float> opt(comm, muon::dist::GradMode::mean);
    opt.add_param("fc.weight", {w.data(), {16, 8}}, {dw.data(), {16, 8}});
    opt.add_param("fc.bias", {b.data(), {16}}, {db.data(), {16}});
    const muon::StepReport& report = opt.step();
    // The same weights on every rank: compare with rank 0's.
    std::vector<float> first = w;
    MPI_Bcast(first.data(), int(first.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
    const int mine = (first == w && w[0] != 0.05f && report.updated == 2) ? 1 : 0;
    MPI_Allreduce(&mine, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rank == 0)
      std::printf("muon::mpi consumer: %d rank(s), one step, weights %s\n", ranks,
                  ok ? "equal on every rank" : "DIFFERENT");
  }
  MPI_Finalize();
  return ok ? 0 : 1;
}
