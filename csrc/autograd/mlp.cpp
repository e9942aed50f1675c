// The differentiable whole-network op `fusedmlp::mlp`: autograd for mlp_fwd / mlp_bwd in C++.
//
// Why C++: for a tiny network (50-30-20-3 at batch 32) the GEMMs are a few microseconds, and a
// Python torch.autograd.Function costs more than the whole network (apply, ctx, a Python
// backward node, the GIL on the way back). This node is one C++ object per step; backward
// never enters Python. It calls the device kernels through the dispatcher (CPU and CUDA alike),
// below autograd, so it is the same op flow as everywhere: autograd -> registered op -> kernel.
// fusedmlp/autograd/mlp.py's MLPFunction is the same graph for the Python-registered (Triton,
// torch reference) kernels.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <fusedmlp/once_differentiable.h>

namespace fusedmlp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using MlpFwdSignature = std::tuple<at::Tensor, std::vector<at::Tensor>>(const at::Tensor&, at::TensorList,
                                                                       at::TensorList);
using MlpBwdSignature = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>(
    const at::Tensor&, const at::Tensor&, at::TensorList, at::TensorList, bool, c10::List<bool>, c10::List<bool>);

std::tuple<at::Tensor, std::vector<at::Tensor>> call_mlp_fwd(const at::Tensor& input, at::TensorList weights,
                                                             at::TensorList biases) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fusedmlp::mlp_fwd", "").typed<MlpFwdSignature>();
  return op.call(input, weights, biases);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> call_mlp_bwd(
    const at::Tensor& grad_output, const at::Tensor& input, at::TensorList weights, at::TensorList activations,
    bool input_grad, c10::List<bool> weight_grads, c10::List<bool> bias_grads) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fusedmlp::mlp_bwd", "").typed<MlpBwdSignature>();
  return op.call(grad_output, input, weights, activations, input_grad, std::move(weight_grads),
                 std::move(bias_grads));
}

struct MLPAutogradFunction : public torch::autograd::Function<MLPAutogradFunction> {
  // Saves the input, the weights and the hidden ReLU outputs (which are also the masks).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, at::TensorList weights,
                            at::TensorList biases) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, activations] = call_mlp_fwd(input, weights, biases);
    ctx->saved_data["layers"] = static_cast<int64_t>(weights.size());
    ctx->saved_data["has_bias"] = !biases.empty();
    variable_list saved;
    saved.reserve(1 + weights.size() + activations.size());
    saved.push_back(input);
    saved.insert(saved.end(), weights.begin(), weights.end());
    saved.insert(saved.end(), activations.begin(), activations.end());
    ctx->save_for_backward(saved);
    return output;
  }

  // Gradients in forward's input order: input, every weight, every bias.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const int64_t layers = ctx->saved_data["layers"].toInt();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::TensorList weights(saved.data() + 1, layers);
    const at::TensorList activations(saved.data() + 1 + layers, layers - 1);
    const bool input_grad = ctx->needs_input_grad(0);
    c10::List<bool> weight_grads, bias_grads;
    for (int64_t i = 0; i < layers; ++i) {
      weight_grads.push_back(ctx->needs_input_grad(1 + i));
      if (has_bias) bias_grads.push_back(ctx->needs_input_grad(1 + layers + i));
    }
    variable_list grads(1 + layers * (has_bias ? 2 : 1));
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      auto [grad_input, grad_weights, grad_biases] =
          call_mlp_bwd(grad_outputs[0], input, weights, activations, input_grad, weight_grads, bias_grads);
      if (input_grad) grads[0] = std::move(grad_input);
      for (int64_t i = 0; i < layers; ++i) {
        if (weight_grads[i]) grads[1 + i] = std::move(grad_weights[i]);
        if (has_bias && bias_grads[i]) grads[1 + layers + i] = std::move(grad_biases[i]);
      }
    }
    return once_differentiable(std::move(grads),
                               "fusedmlp::mlp: trying to differentiate twice; the whole-network MLP op has no double "
                               "backward");
  }
};

at::Tensor mlp_autograd(const at::Tensor& input, at::TensorList weights, at::TensorList biases) {
  return MLPAutogradFunction::apply(input, weights, biases);
}

// Below autograd (inference mode, or tensors that reach the op without autograd): just the
// forward, no activations kept.
at::Tensor mlp_forward_only(const at::Tensor& input, at::TensorList weights, at::TensorList biases) {
  return std::get<0>(call_mlp_fwd(input, weights, biases));
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedmlp, Autograd, m) { m.impl("mlp", &mlp_autograd); }

TORCH_LIBRARY_IMPL(fusedmlp, CompositeExplicitAutograd, m) { m.impl("mlp", &mlp_forward_only); }

}  // namespace fusedmlp
