// SPDX-License-Identifier: MIT
#pragma once
/// \file gpt.hpp
/// \brief A small GPT over bytes, written out in libtorch's C++ frontend.
///
///   bytes (B x T) -> wte (256 x d) + wpe (T x d)
///     -> layers x [ x += attn(ln1(x));  x += mlp(ln2(x)) ]        (pre-norm)
///     -> ln_f -> lm_head (d -> 256), or wte's transpose when tied -> logits
///
///   attn: qkv = x W_qkv^T (one fused (3d, d) weight, no bias), h heads of
///         d/h, causal softmax(q k^T / sqrt(d/h)) v, proj (d, d) + bias
///   mlp:  fc (4d, d) + bias -> GELU -> out (d, 4d) + bias
///
/// The attention is written out (not a fused kernel) so that each head's
/// largest pre-softmax logit of the last forward pass can be read
/// (Attention::max_logits): QK-Clip needs it. The query and key have no bias
/// and the positions are added before the block's LayerNorm, so a logit is
/// exactly bilinear in the query and key rows of W_qkv, and QK-Clip's
/// scaling of those rows caps it exactly.
///
/// The names are what muon::torch::make_hybrid routes by: "wte", "wpe" and
/// "lm_head" contain the routing rules' embedding/head patterns (AdamW), the
/// 1-D gains and biases go to AdamW by shape, and the attention and MLP
/// matrices (blocks.<i>.attn.qkv / attn.proj / mlp.fc / mlp.out .weight) to
/// Muon. A tied head is the one "wte.weight" parameter used twice (no
/// "lm_head" is registered).
///
/// Initialization follows GPT-2 (nanoGPT's reading of it): every weight
/// N(0, 0.02), the two residual projections N(0, 0.02 / sqrt(2 layers)),
/// biases 0, LayerNorm gains 1.

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace transformer_lm {

struct GptConfig {
  std::int64_t vocab = 256;
  std::int64_t d_model = 128;
  std::int64_t layers = 4;
  std::int64_t heads = 4;
  std::int64_t context = 128;
  std::int64_t mlp_ratio = 4;
  bool tied = false;

  std::int64_t head_dim() const { return d_model / heads; }
};

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const GptConfig& c, double init_std, double out_std)
      : heads_(c.heads),
        head_dim_(c.head_dim()),
        qkv_(register_module(
            "qkv",
            torch::nn::Linear(torch::nn::LinearOptions(c.d_model, 3 * c.d_model).bias(false)))),
        proj_(register_module("proj", torch::nn::Linear(c.d_model, c.d_model))) {
    torch::NoGradGuard no_grad;
    qkv_->weight.normal_(0, init_std);
    proj_->weight.normal_(0, out_std);
    proj_->bias.zero_();
    // true above the diagonal: the future positions a query must not see.
    future_ = register_buffer("future", torch::ones({c.context, c.context}, torch::kBool).triu(1));
  }

  torch::Tensor forward(const torch::Tensor& x) {
    const auto B = x.size(0), T = x.size(1), C = x.size(2);
    const auto qkv = qkv_->forward(x).chunk(3, -1);
    auto heads = [&](const torch::Tensor& t) {
      return t.view({B, T, heads_, head_dim_}).transpose(1, 2);  // B, h, T, d_head
    };
    const auto q = heads(qkv[0]), k = heads(qkv[1]), v = heads(qkv[2]);
    auto logits = torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(double(head_dim_)));
    logits = logits.masked_fill(future_.slice(0, 0, T).slice(1, 0, T),
                                -std::numeric_limits<float>::infinity());
    // Each head's largest logit over the batch and the allowed positions
    // (the masked ones are -inf): what QK-Clip compares with tau.
    max_logits_ = logits.detach().amax({0, 2, 3});
    const auto y = torch::matmul(torch::softmax(logits, -1), v);
    return proj_->forward(y.transpose(1, 2).contiguous().view({B, T, C}));
  }

  /// Per head, the largest pre-softmax logit of the last forward pass.
  std::vector<double> max_logits() const {
    const auto m = max_logits_.to(torch::kDouble).contiguous();
    return std::vector<double>(m.data_ptr<double>(), m.data_ptr<double>() + m.numel());
  }

 private:
  std::int64_t heads_, head_dim_;
  torch::nn::Linear qkv_, proj_;
  torch::Tensor future_, max_logits_;
};
TORCH_MODULE(Attention);

class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(const GptConfig& c, double init_std, double out_std)
      : fc_(register_module("fc", torch::nn::Linear(c.d_model, c.mlp_ratio * c.d_model))),
        out_(register_module("out", torch::nn::Linear(c.mlp_ratio * c.d_model, c.d_model))) {
    torch::NoGradGuard no_grad;
    fc_->weight.normal_(0, init_std);
    fc_->bias.zero_();
    out_->weight.normal_(0, out_std);
    out_->bias.zero_();
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return out_->forward(torch::gelu(fc_->forward(x)));
  }

 private:
  torch::nn::Linear fc_, out_;
};
TORCH_MODULE(Mlp);

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const GptConfig& c, double init_std, double out_std)
      : ln1_(
            register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})))),
        attn_(register_module("attn", Attention(c, init_std, out_std))),
        ln2_(
            register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})))),
        mlp_(register_module("mlp", Mlp(c, init_std, out_std))) {}

  torch::Tensor forward(torch::Tensor x) {
    x = x + attn_->forward(ln1_->forward(x));
    return x + mlp_->forward(ln2_->forward(x));
  }
  const Attention& attention() const { return attn_; }

 private:
  torch::nn::LayerNorm ln1_;
  Attention attn_;
  torch::nn::LayerNorm ln2_;
  Mlp mlp_;
};
TORCH_MODULE(Block);

class GptImpl : public torch::nn::Module {
 public:
  explicit GptImpl(const GptConfig& c) : config_(c) {
    const double init_std = 0.02;
    const double out_std = init_std / std::sqrt(2.0 * double(c.layers));
    wte_ = register_module("wte", torch::nn::Embedding(c.vocab, c.d_model));
    wpe_ = register_module("wpe", torch::nn::Embedding(c.context, c.d_model));
    blocks_ = register_module("blocks", torch::nn::ModuleList());
    for (std::int64_t i = 0; i < c.layers; ++i) {
      blocks_->push_back(Block(c, init_std, out_std));
      layers_.push_back(blocks_->ptr<BlockImpl>(static_cast<std::size_t>(i)));
    }
    ln_f_ = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})));
    if (!c.tied)
      lm_head_ = register_module(
          "lm_head", torch::nn::Linear(torch::nn::LinearOptions(c.d_model, c.vocab).bias(false)));
    torch::NoGradGuard no_grad;
    wte_->weight.normal_(0, init_std);
    wpe_->weight.normal_(0, init_std);
    if (!c.tied) lm_head_->weight.normal_(0, init_std);
  }

  /// Logits (B x T x vocab) of a batch of byte sequences (B x T, int64).
  torch::Tensor forward(const torch::Tensor& tokens) {
    const auto T = tokens.size(1);
    auto x = wte_->forward(tokens) + wpe_->forward(torch::arange(T, torch::kInt64));
    for (auto& block : layers_) x = block->forward(x);
    x = ln_f_->forward(x);
    return config_.tied ? torch::matmul(x, wte_->weight.t()) : lm_head_->forward(x);
  }

  /// Per layer, per head: the largest attention logit of the last forward.
  std::vector<std::vector<double>> max_logits() const {
    std::vector<std::vector<double>> all;
    for (const auto& block : layers_) all.push_back(block->attention()->max_logits());
    return all;
  }

  /// The registered name of layer i's fused QKV weight.
  static std::string qkv_name(std::int64_t layer) {
    return "blocks." + std::to_string(layer) + ".attn.qkv.weight";
  }

  const GptConfig& config() const { return config_; }

 private:
  GptConfig config_;
  torch::nn::Embedding wte_{nullptr}, wpe_{nullptr};
  torch::nn::ModuleList blocks_{nullptr};
  std::vector<std::shared_ptr<BlockImpl>> layers_;
  torch::nn::LayerNorm ln_f_{nullptr};
  torch::nn::Linear lm_head_{nullptr};
};
TORCH_MODULE(Gpt);

}  // namespace transformer_lm
