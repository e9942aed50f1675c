#pragma once
// Argument checks shared by the CPU and CUDA linear_relu kernels, so both
// devices reject bad input with the same torch-style messages before any launch.
#include <ATen/ATen.h>

namespace fusedmlp {

inline void check_linear_relu_fwd_args(const at::Tensor& input, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(input.dim() == 2, "linear_relu: expected a 2-D input, got ", input.dim(), "-D");
  TORCH_CHECK(weight.dim() == 2, "linear_relu: expected a 2-D weight [out_features, in_features], got ",
              weight.dim(), "-D");
  TORCH_CHECK(input.size(1) == weight.size(1), "linear_relu: mat1 and mat2 shapes cannot be multiplied (",
              input.size(0), "x", input.size(1), " and ", weight.size(1), "x", weight.size(0), ")");
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(),
              "linear_relu: expected input and weight to have the same dtype, but got ", input.scalar_type(),
              " and ", weight.scalar_type());
  TORCH_CHECK(input.device() == weight.device(),
              "linear_relu: expected all tensors to be on the same device, but found ", input.device(), " and ",
              weight.device());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "linear_relu: expected a floating point dtype, got ", input.scalar_type());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "linear_relu: expected bias of shape [",
                weight.size(0), "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == weight.scalar_type(),
                "linear_relu: expected bias to have dtype ", weight.scalar_type(), ", got ", bias->scalar_type());
    TORCH_CHECK(bias->device() == weight.device(),
                "linear_relu: expected all tensors to be on the same device, but found ", bias->device(), " and ",
                weight.device());
  }
}

inline void check_linear_relu_bwd_args(const at::Tensor& grad_output, const at::Tensor& input,
                                       const at::Tensor& weight, const at::Tensor& output) {
  check_linear_relu_fwd_args(input, weight, std::nullopt);
  const auto M = input.size(0), N = weight.size(0);
  TORCH_CHECK(grad_output.dim() == 2 && grad_output.size(0) == M && grad_output.size(1) == N,
              "linear_relu_bwd: expected grad_output of shape [", M, ", ", N, "], got ", grad_output.sizes());
  TORCH_CHECK(output.sizes() == grad_output.sizes(), "linear_relu_bwd: expected output of shape [", M, ", ", N,
              "], got ", output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type() && output.scalar_type() == input.scalar_type(),
              "linear_relu_bwd: expected grad_output and output to have dtype ", input.scalar_type());
  TORCH_CHECK(grad_output.device() == input.device() && output.device() == input.device(),
              "linear_relu_bwd: expected all tensors to be on the same device");
}

}  // namespace fusedmlp
