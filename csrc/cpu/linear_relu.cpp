// Linear(+ReLU) on CPU. The GEMMs go through ATen (MKL/oneDNN/OpenBLAS, whichever torch
// was built with); what is fused is everything around them: bias and ReLU in one pass
// over the GEMM output, and in backward the ReLU mask and the bias-gradient reduction in
// one pass over grad_output.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <fusedmlp/cpu_epilogues.h>
#include <fusedmlp/linear_relu.h>

namespace fusedmlp {
namespace {

at::Tensor linear_relu_fwd_cpu(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, bool relu) {
  check_linear_relu_fwd_args(input, weight, bias);
  TORCH_CHECK(input.device().is_cpu(), "linear_relu_fwd_cpu: expected CPU tensors, got ", input.device());
  at::Tensor out = at::mm(input, weight.t());
  const bool has_bias = bias.has_value();
  if (!has_bias && !relu) return out;
  const at::Tensor bias_c = has_bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "linear_relu_fwd_cpu", [&] {
    cpu::add_bias_relu<scalar_t>(out.data_ptr<scalar_t>(), has_bias ? bias_c.const_data_ptr<scalar_t>() : nullptr,
                                 out.size(0), out.size(1), relu);
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
    const at::Tensor output_c = relu ? output.contiguous() : at::Tensor();
    if (relu && need_gemm_grad) grad_pre = at::empty({M, N}, input.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "linear_relu_bwd_cpu", [&] {
      cpu::relu_mask_bias_grad<scalar_t>(grad_c.const_data_ptr<scalar_t>(),
                                         relu ? output_c.const_data_ptr<scalar_t>() : nullptr, M, N,
                                         (relu && need_gemm_grad) ? grad_pre.data_ptr<scalar_t>() : nullptr,
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
