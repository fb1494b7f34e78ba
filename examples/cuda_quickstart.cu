// SPDX-License-Identifier: MIT
// CUDA quickstart: orthogonalize a bf16 matrix on the device, then run the
// device optimizer (Muon + AdamW) eagerly and as one CUDA-graph replay per step.
// Build: link muon::cuda (cmake -DMUON_ENABLE_CUDA=ON), compile this .cu with nvcc.
#include <muon/cuda.hpp>

#include <cstdio>
#include <vector>

namespace mc = muon::cuda;

// Everything that allocates on `stream` lives in here, so it is released
// (stream-ordered) before the stream is destroyed.
void quickstart(cudaStream_t stream) {
  // 1. One matrix. A PyTorch (768, 3072) row-major tensor is viewed as its
  //    transpose; NS(W^T) = NS(W)^T, so orthogonalizing the view in place gives
  //    NS(W) in torch's layout.
  const int rows = 768, cols = 3072;
  std::vector<__nv_bfloat16> host(static_cast<std::size_t>(rows) * cols);
  for (std::size_t k = 0; k < host.size(); ++k)
    host[k] = __float2bfloat16(static_cast<float>((k * 2654435761u) % 1000) / 1000.0f - 0.5f);
  mc::DeviceMatrix<__nv_bfloat16> W(cols, rows, stream);  // memory of the (768, 3072) tensor
  W.upload(host.data(), stream);
  const auto view = mc::MatrixView<__nv_bfloat16>::row_major(W.data(), rows, cols);
  mc::orthogonalize<__nv_bfloat16>(mc::MatrixView<const __nv_bfloat16>(view), view,
                                   muon::NewtonSchulzOptions(), stream);  // Jordan x5
  W.download(host.data(), stream);
  MUON_CUDA_CHECK(cudaStreamSynchronize(stream));
  double sq = 0;
  for (const auto& v : host) sq += static_cast<double>(__bfloat162float(v)) * __bfloat162float(v);
  std::printf("||NS(W)||_F^2 = %.1f (about %d x 0.7..1.1 for Jordan's schedule)\n", sq, rows);

  // 2. The optimizer over two matrices, a bias and an embedding (fp32 params,
  //    bf16 NS), routed by the same rules as the CPU optimizer.
  mc::DeviceMatrix<float> w1(256, 512, stream), g1(256, 512, stream);
  mc::DeviceMatrix<float> w2(256, 512, stream), g2(256, 512, stream);
  mc::DeviceMatrix<float> b(256, 1, stream), gb(256, 1, stream);
  mc::DeviceMatrix<float> e(512, 1000, stream), ge(512, 1000, stream);  // a (1000, 512) table
  for (auto* m : {&w1, &g1, &w2, &g2, &b, &gb, &e, &ge})
    MUON_CUDA_CHECK(cudaMemsetAsync(m->data(), 0, m->bytes(), stream));
  std::vector<float> ones(256 * 512, 1e-2f);
  g1.upload(ones.data(), stream);
  g2.upload(ones.data(), stream);
  gb.upload(ones.data(), stream);

  // torch.optim.Muon defaults (lr 1e-3, wd 0.1, mu 0.95, Nesterov), lr 0.02:
  // the same options, routing and checkpoints as the CPU muon::Optimizer.
  mc::Optimizer<float> muon(muon::MuonGroupOptions().with_lr(0.02));
  muon.add_param("layer.0.weight", w1.data(), g1.data(), {256, 512});  // row-major (out, in)
  muon.add_param("layer.1.weight", w2.data(), g2.data(), {256, 512});
  muon.add_param("layer.0.bias", b.data(), gb.data(), {256});            // 1-D: AdamW
  muon.add_param("tok_embed.weight", e.data(), ge.data(), {1000, 512});  // by name: AdamW
  std::printf("%s", muon.routing().table().c_str());
  muon.step(stream);                                // eager step
  muon.report(stream);                              // what it did (throws if it was refused)
  muon.capture(stream);                             // record one step as a graph
  for (int s = 0; s < 3; ++s) muon.replay(stream);  // one launch per step
  muon.report(stream);
  std::printf("steps: %lld, same-shape batches (batched NS calls): %zu\n",
              static_cast<long long>(muon.step_count()), muon.shape_batch_count());
}

int main() {
  if (!mc::device_available()) {
    std::puts("no CUDA device: skipping");
    return 0;
  }
  cudaStream_t stream = nullptr;
  MUON_CUDA_CHECK(cudaStreamCreate(&stream));
  quickstart(stream);
  MUON_CUDA_CHECK(cudaStreamSynchronize(stream));
  MUON_CUDA_CHECK(cudaStreamDestroy(stream));
  return 0;
}
