#pragma once
// Argument checks for the whole-network MLP ops (mlp_fwd / mlp_bwd), shared by every device
// that implements them, so each rejects bad input with the same torch-style messages.
#include <ATen/ATen.h>

namespace fusedmlp {

// input [M, K0]; weights[i] [K(i+1), K(i)] (nn.Linear layout); biases: one [K(i+1)] per
// weight, or none at all.
inline void check_mlp_fwd_args(const at::Tensor& input, at::TensorList weights, at::TensorList biases) {
  TORCH_CHECK(!weights.empty(), "mlp: expected at least one layer, got no weights");
  TORCH_CHECK(biases.empty() || biases.size() == weights.size(), "mlp: expected one bias per weight or none, got ",
              biases.size(), " biases for ", weights.size(), " weights");
  TORCH_CHECK(input.dim() == 2, "mlp: expected a 2-D input, got ", input.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "mlp: expected a floating point dtype, got ",
              input.scalar_type());
  int64_t width = input.size(1);
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& weight = weights[i];
    TORCH_CHECK(weight.dim() == 2, "mlp: expected weight ", i, " to be 2-D [out_features, in_features], got ",
                weight.dim(), "-D");
    TORCH_CHECK(weight.size(1) == width, "mlp: layer ", i, ": mat1 and mat2 shapes cannot be multiplied (",
                input.size(0), "x", width, " and ", weight.size(1), "x", weight.size(0), ")");
    TORCH_CHECK(weight.scalar_type() == input.scalar_type(), "mlp: expected input and weight ", i,
                " to have the same dtype, but got ", input.scalar_type(), " and ", weight.scalar_type());
    TORCH_CHECK(weight.device() == input.device(), "mlp: expected all tensors to be on the same device, but found ",
                input.device(), " and ", weight.device(), " (weight ", i, ")");
    if (!biases.empty()) {
      const at::Tensor& bias = biases[i];
      TORCH_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "mlp: expected bias ", i, " of shape [",
                  weight.size(0), "], got ", bias.sizes());
      TORCH_CHECK(bias.scalar_type() == input.scalar_type(), "mlp: expected bias ", i, " to have dtype ",
                  input.scalar_type(), ", got ", bias.scalar_type());
      TORCH_CHECK(bias.device() == input.device(), "mlp: expected all tensors to be on the same device, but found ",
                  input.device(), " and ", bias.device(), " (bias ", i, ")");
    }
    width = weight.size(0);
  }
}

inline void check_mlp_bwd_args(const at::Tensor& grad_output, const at::Tensor& input, at::TensorList weights,
                               at::TensorList activations, const std::vector<bool>& weight_grads,
                               const std::vector<bool>& bias_grads) {
  const size_t layers = weights.size();
  check_mlp_fwd_args(input, weights, {});
  TORCH_CHECK(activations.size() == layers - 1, "mlp_bwd: expected ", layers - 1,
              " activations (one per hidden layer), got ", activations.size());
  TORCH_CHECK(weight_grads.size() == layers, "mlp_bwd: expected ", layers, " weight_grads flags, got ",
              weight_grads.size());
  TORCH_CHECK(bias_grads.empty() || bias_grads.size() == layers, "mlp_bwd: expected ", layers,
              " bias_grads flags (or none, without biases), got ", bias_grads.size());
  const int64_t M = input.size(0);
  for (size_t i = 0; i + 1 < layers; ++i) {
    const at::Tensor& act = activations[i];
    TORCH_CHECK(act.dim() == 2 && act.size(0) == M && act.size(1) == weights[i].size(0), "mlp_bwd: expected activation ",
                i, " of shape [", M, ", ", weights[i].size(0), "], got ", act.sizes());
    TORCH_CHECK(act.scalar_type() == input.scalar_type() && act.device() == input.device(),
                "mlp_bwd: expected activation ", i, " to have the dtype and device of input");
  }
  const int64_t N = weights[layers - 1].size(0);
  TORCH_CHECK(grad_output.dim() == 2 && grad_output.size(0) == M && grad_output.size(1) == N,
              "mlp_bwd: expected grad_output of shape [", M, ", ", N, "], got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type() && grad_output.device() == input.device(),
              "mlp_bwd: expected grad_output to have the dtype and device of input");
}

// The shapes the fused whole-network GPU kernels cover: every width (input features and every
// layer's out features) at most kFusedMlpMaxWidth, since a layer's weights and a batch tile of
// activations live in shared memory, and at most kFusedMlpMaxLayers layers, whose pointers
// travel in the kernel's argument block. FusedMLP runs other networks layer by layer; this
// check is the kernels' own safety net.
constexpr int64_t kFusedMlpMaxWidth = 128;
constexpr int64_t kFusedMlpMaxLayers = 8;

inline void check_fused_mlp_coverage(const char* op, const at::Tensor& input, at::TensorList weights) {
  TORCH_CHECK(static_cast<int64_t>(weights.size()) <= kFusedMlpMaxLayers, op,
              ": the fused whole-network kernel covers at most ", kFusedMlpMaxLayers, " layers, got ",
              weights.size(), "; FusedMLP runs such networks layer by layer");
  TORCH_CHECK(input.size(1) <= kFusedMlpMaxWidth, op, ": the fused whole-network kernel covers widths up to ",
              kFusedMlpMaxWidth, ", got ", input.size(1), " input features; FusedMLP runs such networks layer by layer");
  for (size_t i = 0; i < weights.size(); ++i) {
    TORCH_CHECK(weights[i].size(0) <= kFusedMlpMaxWidth, op, ": the fused whole-network kernel covers widths up to ",
                kFusedMlpMaxWidth, ", got ", weights[i].size(0), " out features in layer ", i,
                "; FusedMLP runs such networks layer by layer");
  }
}

}  // namespace fusedmlp
