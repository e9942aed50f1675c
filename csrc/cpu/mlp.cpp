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

#include <fusedmlp/mlp.h>

namespace fusedmlp {
namespace {

// Rows per parallel task: enough work per task to amortize the thread-pool handoff.
constexpr int64_t kGrainElements = 32768;
// Columns a backward task owns. Each task walks every row for its columns, so the bias
// gradient is summed in a fixed order (deterministic for any thread count).
constexpr int64_t kBiasGradColumns = 256;

// out[m, :] = act(out[m, :] + bias), in place on the contiguous [M, N] GEMM result.
template <typename scalar_t>
void add_bias_relu(scalar_t* out, const scalar_t* bias, int64_t M, int64_t N, bool relu) {
  using Vec = at::vec::Vectorized<scalar_t>;
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(N, 1));
  at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
    const Vec zero(scalar_t(0));
    for (int64_t m = begin; m < end; ++m) {
      scalar_t* row = out + m * N;
      int64_t n = 0;
      if constexpr (!at::is_reduced_floating_point_v<scalar_t>) {
        for (; n + Vec::size() <= N; n += Vec::size()) {
          Vec v = Vec::loadu(row + n);
          if (bias != nullptr) v = v + Vec::loadu(bias + n);
          if (relu) v = at::vec::clamp_min(v, zero);  // propagates NaN, as torch.relu does
          v.store(row + n);
        }
      }
      // Half/bfloat16 (and the tail): add in fp32 so the bias add rounds once.
      for (; n < N; ++n) {
        opmath_t v = static_cast<opmath_t>(row[n]);
        if (bias != nullptr) v += static_cast<opmath_t>(bias[n]);
        if (relu && v < opmath_t(0)) v = opmath_t(0);
        row[n] = static_cast<scalar_t>(v);
      }
    }
  });
}

// grad_pre = activation ? grad * (activation > 0) : grad, written to grad_pre (may equal grad,
// may be null), and grad_bias = grad_pre.sum(0) (may be null), in one pass over contiguous [M, N].
template <typename scalar_t>
void relu_mask_bias_grad(const scalar_t* grad, const scalar_t* activation, int64_t M, int64_t N, scalar_t* grad_pre,
                         scalar_t* grad_bias) {
  using opmath_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, N, kBiasGradColumns, [&](int64_t begin, int64_t end) {
    // A task may get more than kBiasGradColumns columns (one thread gets them all): walk
    // them in blocks that fit the accumulator.
    for (int64_t block = begin; block < end; block += kBiasGradColumns) {
      const int64_t width = std::min(kBiasGradColumns, end - block);
      opmath_t acc[kBiasGradColumns] = {};
      for (int64_t m = 0; m < M; ++m) {
        const int64_t row = m * N + block;
        int64_t j = 0;
        if constexpr (!at::is_reduced_floating_point_v<scalar_t>) {
          // Same arithmetic as the scalar loop below (each column summed in row order), so
          // the result does not depend on the vector width.
          using Vec = at::vec::Vectorized<scalar_t>;
          const Vec zero(scalar_t(0));
          for (; j + Vec::size() <= width; j += Vec::size()) {
            Vec g = Vec::loadu(grad + row + j);
            if (activation != nullptr) g = Vec::blendv(zero, g, Vec::loadu(activation + row + j) > zero);
            if (grad_pre != nullptr) g.store(grad_pre + row + j);
            (Vec::loadu(acc + j) + g).store(acc + j);
          }
        }
        for (; j < width; ++j) {
          const scalar_t g =
              (activation != nullptr && !(activation[row + j] > scalar_t(0))) ? scalar_t(0) : grad[row + j];
          if (grad_pre != nullptr) grad_pre[row + j] = g;
          acc[j] += static_cast<opmath_t>(g);
        }
      }
      if (grad_bias != nullptr) {
        for (int64_t j = 0; j < width; ++j) grad_bias[block + j] = static_cast<scalar_t>(acc[j]);
      }
    }
  });
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
