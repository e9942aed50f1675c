// Linear(+ReLU) on CPU. The GEMMs go through ATen (MKL/oneDNN/OpenBLAS, whichever torch
// was built with); what is fused is everything around them: bias and ReLU in one pass
// over the GEMM output, and in backward the ReLU mask and the bias-gradient reduction in
// one pass over grad_output.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <fusedmlp/linear_relu.h>

namespace fusedmlp {
namespace {

// Rows per parallel task: enough work per task to amortize the thread-pool handoff.
constexpr int64_t kGrainElements = 32768;
// Columns a task owns in the backward pass. Each task walks every row for its columns, so
// the bias gradient is summed in a fixed order (deterministic for any thread count).
constexpr int64_t kBiasGradColumns = 256;

template <typename scalar_t>
void bias_relu_epilogue(at::Tensor& out, const scalar_t* bias, bool relu) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const int64_t M = out.size(0), N = out.size(1);
  scalar_t* data = out.data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(N, 1));
  at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
    const Vec zero(scalar_t(0));
    for (int64_t m = begin; m < end; ++m) {
      scalar_t* row = data + m * N;
      int64_t n = 0;
      if constexpr (!at::is_reduced_floating_point_v<scalar_t>) {
        for (; n + Vec::size() <= N; n += Vec::size()) {
          Vec v = Vec::loadu(row + n);
          if (bias != nullptr) v = v + Vec::loadu(bias + n);
          // at::vec::clamp_min propagates NaN, as torch.relu does.
          if (relu) v = at::vec::clamp_min(v, zero);
          v.store(row + n);
        }
      }
      // Half/bfloat16 (and the tail): add in fp32 so the bias add rounds once.
      using opmath_t = at::opmath_type<scalar_t>;
      for (; n < N; ++n) {
        opmath_t v = static_cast<opmath_t>(row[n]);
        if (bias != nullptr) v += static_cast<opmath_t>(bias[n]);
        if (relu && v < opmath_t(0)) v = opmath_t(0);
        row[n] = static_cast<scalar_t>(v);
      }
    }
  });
}

// grad_pre = relu ? grad * (output > 0) : grad, and grad_bias = grad_pre.sum(0), in one pass.
// grad and output are contiguous [M, N]; grad_pre and grad_bias may be null when not wanted.
template <typename scalar_t>
void relu_mask_bias_grad(const scalar_t* grad, const scalar_t* output, int64_t M, int64_t N, bool relu,
                         scalar_t* grad_pre, scalar_t* grad_bias) {
  using opmath_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, N, kBiasGradColumns, [&](int64_t begin, int64_t end) {
    // A task may get more than kBiasGradColumns columns (one thread gets them all): walk
    // them in blocks that fit the accumulator.
    for (int64_t block = begin; block < end; block += kBiasGradColumns) {
      const int64_t width = std::min(kBiasGradColumns, end - block);
      opmath_t acc[kBiasGradColumns] = {};
      for (int64_t m = 0; m < M; ++m) {
        const int64_t row = m * N + block;
        for (int64_t j = 0; j < width; ++j) {
          const scalar_t g = (relu && !(output[row + j] > scalar_t(0))) ? scalar_t(0) : grad[row + j];
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

at::Tensor linear_relu_fwd_cpu(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, bool relu) {
  check_linear_relu_fwd_args(input, weight, bias);
  TORCH_CHECK(input.device().is_cpu(), "linear_relu_fwd_cpu: expected CPU tensors, got ", input.device());
  at::Tensor out = at::mm(input, weight.t());
  const bool has_bias = bias.has_value();
  if (!has_bias && !relu) return out;
  const at::Tensor bias_c = has_bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "linear_relu_fwd_cpu", [&] {
    bias_relu_epilogue<scalar_t>(out, has_bias ? bias_c.const_data_ptr<scalar_t>() : nullptr, relu);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_relu_bwd_cpu(const at::Tensor& grad_output,
                                                                   const at::Tensor& input,
                                                                   const at::Tensor& weight,
                                                                   const at::Tensor& output, bool relu,
                                                                   std::array<bool, 3> output_mask) {
  check_linear_relu_bwd_args(grad_output, input, weight, output);
  TORCH_CHECK(input.device().is_cpu(), "linear_relu_bwd_cpu: expected CPU tensors, got ", input.device());
  const int64_t M = grad_output.size(0), N = grad_output.size(1);
  const bool need_gemm_grad = output_mask[0] || output_mask[1];
  // Gradients not asked for come back as distinct empty tensors (outputs must not alias).
  const auto empty = [&] { return at::empty({0}, input.options()); };

  at::Tensor grad_pre = grad_output;  // with no ReLU the GEMMs read grad_output as it is
  at::Tensor grad_bias = output_mask[2] ? at::empty({N}, input.options()) : empty();
  if (relu || output_mask[2]) {
    const at::Tensor grad_c = grad_output.contiguous();
    const at::Tensor output_c = relu ? output.contiguous() : grad_c;
    if (relu && need_gemm_grad) grad_pre = at::empty({M, N}, input.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "linear_relu_bwd_cpu", [&] {
      relu_mask_bias_grad<scalar_t>(grad_c.const_data_ptr<scalar_t>(), output_c.const_data_ptr<scalar_t>(), M, N,
                                    relu, (relu && need_gemm_grad) ? grad_pre.data_ptr<scalar_t>() : nullptr,
                                    output_mask[2] ? grad_bias.data_ptr<scalar_t>() : nullptr);
    });
  }
  at::Tensor grad_input = output_mask[0] ? at::mm(grad_pre, weight) : empty();
  at::Tensor grad_weight = output_mask[1] ? at::mm(grad_pre.t(), input) : empty();
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedmlp, CPU, m) {
  m.impl("linear_relu_fwd", &linear_relu_fwd_cpu);
  m.impl("linear_relu_bwd", &linear_relu_bwd_cpu);
}

}  // namespace fusedmlp
