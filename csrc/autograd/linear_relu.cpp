// The differentiable op `fusedmlp::linear_relu`: autograd for linear_relu_fwd / linear_relu_bwd
// in C++, for the backends whose kernels are C++ (the per-layer path: FusedLinear,
// FusedLinearReLU, convert(), FusedMLP layer by layer).
//
// Why C++: on a tiny layer (32 x 50 -> 30) the GEMM is about a microsecond, and a Python
// torch.autograd.Function (apply, ctx, a Python backward node) costs tens. This node is the
// same graph as fusedmlp/autograd/linear_relu.py's LinearReLUFunction (which stays for the
// Python-registered Triton and torch kernels): it saves the input, the weight and, for ReLU,
// the output (output > 0 is the mask); backward is one linear_relu_bwd call.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <fusedmlp/once_differentiable.h>

namespace fusedmlp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_linear_relu_fwd(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, bool relu) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fusedmlp::linear_relu_fwd", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, bool)>();
  return op.call(input, weight, bias, relu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_linear_relu_bwd(const at::Tensor& grad_output,
                                                                    const at::Tensor& input, const at::Tensor& weight,
                                                                    const at::Tensor& output, bool relu,
                                                                    std::array<bool, 3> output_mask) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fusedmlp::linear_relu_bwd", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool,
                                 std::array<bool, 3>)>();
  return op.call(grad_output, input, weight, output, relu, output_mask);
}

struct LinearReLUAutogradFunction : public torch::autograd::Function<LinearReLUAutogradFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, bool relu) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor output = call_linear_relu_fwd(input, weight, bias, relu);
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    // Without ReLU the kernels never read the output: grad_output stands in for it.
    ctx->save_for_backward(relu ? variable_list{input, weight, output} : variable_list{input, weight});
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const bool relu = ctx->saved_data["relu"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& grad_output = grad_outputs[0];
    const std::array<bool, 3> output_mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                          has_bias && ctx->needs_input_grad(2)};
    variable_list grads(4);
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      auto [grad_input, grad_weight, grad_bias] =
          call_linear_relu_bwd(grad_output, saved[0], saved[1], relu ? saved[2] : grad_output, relu, output_mask);
      if (output_mask[0]) grads[0] = std::move(grad_input);
      if (output_mask[1]) grads[1] = std::move(grad_weight);
      if (output_mask[2]) grads[2] = std::move(grad_bias);
    }
    return once_differentiable(
        std::move(grads),
        "fusedmlp::linear_relu: trying to differentiate twice; the fused Linear+ReLU op has no double backward");
  }
};

at::Tensor linear_relu_autograd(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, bool relu) {
  return LinearReLUAutogradFunction::apply(input, weight, bias, relu);
}

at::Tensor linear_relu_forward_only(const at::Tensor& input, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, bool relu) {
  return call_linear_relu_fwd(input, weight, bias, relu);
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedmlp, Autograd, m) { m.impl("linear_relu", &linear_relu_autograd); }

TORCH_LIBRARY_IMPL(fusedmlp, CompositeExplicitAutograd, m) { m.impl("linear_relu", &linear_relu_forward_only); }

}  // namespace fusedmlp
