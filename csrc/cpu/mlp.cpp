// The whole MLP (Linear, ReLU, ..., Linear) on CPU in one op per direction. For a narrow
// network the per-op cost of the framework (dispatch, autograd nodes, allocations) is most of
// the time, so the forward runs every layer in one call: one GEMM per layer, straight into the
// CPU kernel (at::cpu::addmm skips the dispatcher; the bias rides in the GEMM), then one
// in-place ReLU pass. The backward runs every layer in one call as well: after each input-gradient GEMM, one
// pass applies the previous layer's ReLU mask in place and reduces its bias gradient.
// Small passes over networks whose widths are all narrow (fp32/fp64) skip the BLAS for
// cpu_small_gemm.h's kernel, which costs nothing beyond its FMAs (a tiny layer's BLAS call is
// mostly overhead).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <torch/library.h>

#include <fusedmlp/cpu_epilogues.h>
#include <fusedmlp/cpu_small_gemm.h>
#include <fusedmlp/mlp.h>

namespace fusedmlp {
namespace {

using cpu::add_bias_relu;
using cpu::relu_mask_bias_grad;
using cpu::SmallGemmArgs;

// Above this many FMAs per pass (a 50-30-20-3 network at ~240 rows) the BLAS's blocking for
// the cache and wider vectors beat the small GEMM's zero overhead (measured on one AVX2 core:
// at half this size the small GEMM is still 1.2-2x faster, at twice it 1.2-1.6x slower).
constexpr int64_t kSmallGemmMaxNetworkFmas = int64_t{1} << 19;

// Whether every layer goes through the small GEMM: fp32/fp64, every width narrow enough for
// its panels, and a small enough pass. Weights must be contiguous: the backward reads them as B.
bool use_small_gemm(const at::Tensor& input, at::TensorList weights) {
  const auto dtype = input.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return false;
  if (input.size(1) > cpu::kSmallGemmMaxWidth) return false;
  int64_t fmas_per_row = 0;
  for (const at::Tensor& weight : weights) {
    if (weight.size(0) > cpu::kSmallGemmMaxWidth || !weight.is_contiguous()) return false;
    fmas_per_row += weight.size(0) * weight.size(1);
  }
  return input.size(0) * fmas_per_row <= kSmallGemmMaxNetworkFmas;
}

// x [M, K] (any strides) @ weight[N, K]^T + bias -> a new contiguous [M, N].
template <typename T>
at::Tensor small_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  // The kernel wants B = weight^T row-major; the transpose of a narrow weight is a few
  // thousand copies, less than one BLAS call's packing.
  std::vector<T> weight_t(static_cast<size_t>(K * N));
  const T* w = weight.const_data_ptr<T>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) weight_t[k * N + n] = w[n * K + k];
  }
  at::Tensor out = at::empty({M, N}, x.options());
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  cpu::small_gemm<T>(SmallGemmArgs{M, N, K, x.stride(0), x.stride(1)}, x.const_data_ptr<T>(), weight_t.data(),
                     bias.has_value() ? bias_c.const_data_ptr<T>() : nullptr, out.mutable_data_ptr<T>());
  return out;
}

// grad [M, N] (any strides)^T @ layer_input [M, K] -> grad_weight [N, K], summed over the
// batch in order.
template <typename T>
at::Tensor small_weight_grad(const at::Tensor& grad, const at::Tensor& layer_input) {
  const int64_t M = grad.size(0), N = grad.size(1), K = layer_input.size(1);
  const at::Tensor input_c = layer_input.contiguous();
  at::Tensor out = at::empty({N, K}, grad.options());
  cpu::small_gemm<T>(SmallGemmArgs{N, K, M, grad.stride(1), grad.stride(0)}, grad.const_data_ptr<T>(),
                     input_c.const_data_ptr<T>(), nullptr, out.mutable_data_ptr<T>());
  return out;
}

// grad [M, N] (any strides) @ weight [N, K] (contiguous) -> [M, K].
template <typename T>
at::Tensor small_input_grad(const at::Tensor& grad, const at::Tensor& weight) {
  const int64_t M = grad.size(0), N = grad.size(1), K = weight.size(1);
  at::Tensor out = at::empty({M, K}, grad.options());
  cpu::small_gemm<T>(SmallGemmArgs{M, K, N, grad.stride(0), grad.stride(1)}, grad.const_data_ptr<T>(),
                     weight.const_data_ptr<T>(), nullptr, out.mutable_data_ptr<T>());
  return out;
}

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
  const bool small = use_small_gemm(input, weights);
  for (size_t i = 0; i < layers; ++i) {
    const bool relu = i + 1 < layers;
    std::optional<at::Tensor> bias;
    if (!biases.empty()) bias = biases[i];
    at::Tensor out;
    if (small) {
      AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "mlp_fwd_cpu", [&] { out = small_linear<scalar_t>(hidden, weights[i], bias); });
      bias.reset();
    } else if (bias.has_value()) {
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
  const bool small = use_small_gemm(input, weights);
  for (int64_t i = layers - 1; i >= 0; --i) {
    // Here `grad` is the gradient of layer i's pre-activation, its bias gradient is done.
    const at::Tensor& layer_input = i == 0 ? input : activations[i - 1];
    if (weight_mask[i]) {
      if (small) {
        AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "mlp_bwd_cpu",
                                   [&] { grad_weights[i] = small_weight_grad<scalar_t>(grad, layer_input); });
      } else {
        grad_weights[i] = at::cpu::mm(grad.t(), layer_input);
      }
    }
    if (!wanted_below[i]) break;
    at::Tensor grad_below;
    if (small) {
      AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "mlp_bwd_cpu",
                                 [&] { grad_below = small_input_grad<scalar_t>(grad, weights[i]); });
    } else {
      grad_below = at::cpu::mm(grad, weights[i]);
    }
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
