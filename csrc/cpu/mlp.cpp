// The whole MLP (Linear, ReLU, ..., Linear) on CPU in one op per direction. For a narrow
// network the per-op cost of the framework (dispatch, autograd nodes, allocations) is most of
// the time, so the forward runs every layer in one call: one GEMM per layer, straight into the
// CPU kernel (at::cpu::addmm skips the dispatcher; the bias rides in the GEMM), then one
// in-place ReLU pass. The backward runs every layer in one call as well: after each input-gradient GEMM, one
// pass applies the previous layer's ReLU mask in place and reduces its bias gradient.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <torch/library.h>

#include <fusedmlp/cpu_epilogues.h>
#include <fusedmlp/mlp.h>

namespace fusedmlp {
namespace {

using cpu::add_bias_relu;
using cpu::relu_mask_bias_grad;

// Returns (output, activations): activations[i] is the ReLU output of hidden layer i, kept for
// backward, where activation > 0 is also the ReLU mask (no pre-activation is stored).
std::tuple<at::Tensor, std::vector<at::Tensor>> mlp_fwd_cpu(const at::Tensor& input, at::TensorList weights,
                                                           at::TensorList biases) {
  check_mlp_fwd_args(input, weights, biases);
  TORCH_CHECK(input.device().is_cpu(), "mlp_fwd_cpu: expected CPU tensors, got ", input.device());
  const size_t layers = weights.size();
  std::vector<at::Tensor> activations;
  activations.reserve(layers - 1);
  at::Tensor hidden = input;
  for (size_t i = 0; i < layers; ++i) {
    const bool relu = i + 1 < layers;
    std::optional<at::Tensor> bias;
    if (!biases.empty()) bias = biases[i];
    at::Tensor out;
    if (bias.has_value()) {
      // The bias goes into the GEMM (beta = 1 on the bias rows), as torch's addmm does: one
      // rounding, and for half/bfloat16 that matters, since rounding the product before adding
      // the bias could flip the sign of a small pre-activation, and with it the ReLU mask.
      out = at::cpu::addmm(*bias, hidden, weights[i].t());
      bias.reset();
    } else {
      out = at::cpu::mm(hidden, weights[i].t());
    }
    if (bias.has_value() || relu) {
      const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "mlp_fwd_cpu", [&] {
        add_bias_relu<scalar_t>(out.data_ptr<scalar_t>(), bias.has_value() ? bias_c.const_data_ptr<scalar_t>() : nullptr,
                                out.size(0), out.size(1), relu);
      });
    }
    if (relu) activations.push_back(out);
    hidden = std::move(out);
  }
  return {hidden, activations};
}

// Gradients of the layers whose flag is false come back as empty (numel 0) tensors, as does
// grad_input when input_grad is false.
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_bwd_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, at::TensorList weights, at::TensorList activations,
    bool input_grad, c10::List<bool> weight_grads, c10::List<bool> bias_grads) {
  const std::vector<bool> weight_mask(weight_grads.begin(), weight_grads.end());
  std::vector<bool> bias_mask(bias_grads.begin(), bias_grads.end());
  check_mlp_bwd_args(grad_output, input, weights, activations, weight_mask, bias_mask);
  const size_t num_biases = bias_mask.size();  // 0 for a network without biases
  bias_mask.resize(weights.size(), false);
  TORCH_CHECK(input.device().is_cpu(), "mlp_bwd_cpu: expected CPU tensors, got ", input.device());
  const int64_t layers = static_cast<int64_t>(weights.size());
  const int64_t M = input.size(0);
  const auto empty = [&] { return at::empty({0}, input.options()); };
  std::vector<at::Tensor> grad_weights(layers), grad_biases(num_biases);
  for (int64_t i = 0; i < layers; ++i) grad_weights[i] = empty();
  for (size_t i = 0; i < num_biases; ++i) {
    grad_biases[i] = bias_mask[i] ? at::empty({weights[i].size(0)}, input.options()) : empty();
  }
  // wanted_below[i]: some gradient of a layer before i (or of the input) is wanted, so the
  // gradient has to flow through layer i's input.
  std::vector<bool> wanted_below(layers, input_grad);
  for (int64_t i = 1; i < layers; ++i) {
    wanted_below[i] = wanted_below[i - 1] || weight_mask[i - 1] || bias_mask[i - 1];
  }

  // The output layer has no ReLU: its pre-activation gradient is grad_output as it is.
  at::Tensor grad = grad_output;
  if (bias_mask[layers - 1]) {
    const at::Tensor grad_c = grad_output.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "mlp_bwd_cpu", [&] {
      relu_mask_bias_grad<scalar_t>(grad_c.const_data_ptr<scalar_t>(), nullptr, M, grad_c.size(1), nullptr,
                                    grad_biases[layers - 1].data_ptr<scalar_t>());
    });
  }
  at::Tensor grad_input = empty();
  for (int64_t i = layers - 1; i >= 0; --i) {
    // Here `grad` is the gradient of layer i's pre-activation, its bias gradient is done.
    const at::Tensor& layer_input = i == 0 ? input : activations[i - 1];
    if (weight_mask[i]) grad_weights[i] = at::cpu::mm(grad.t(), layer_input);
    if (!wanted_below[i]) break;
    at::Tensor grad_below = at::cpu::mm(grad, weights[i]);
    if (i == 0) {
      grad_input = std::move(grad_below);
      break;
    }
    // grad_below is ours and contiguous: mask it in place and reduce layer i-1's bias gradient.
    const at::Tensor& activation = activations[i - 1];
    const at::Tensor activation_c = activation.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "mlp_bwd_cpu", [&] {
      scalar_t* data = grad_below.data_ptr<scalar_t>();
      relu_mask_bias_grad<scalar_t>(data, activation_c.const_data_ptr<scalar_t>(), M, grad_below.size(1), data,
                                    bias_mask[i - 1] ? grad_biases[i - 1].data_ptr<scalar_t>() : nullptr);
    });
    grad = std::move(grad_below);
  }
  return {grad_input, grad_weights, grad_biases};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedmlp, CPU, m) {
  m.impl("mlp_fwd", &mlp_fwd_cpu);
  m.impl("mlp_bwd", &mlp_bwd_cpu);
}

}  // namespace fusedmlp
