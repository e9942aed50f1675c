#pragma once
// The C++ autograd ops' counterpart of Python's @once_differentiable: their backward kernels
// have no derivative of their own, so gradients computed with create_graph=True carry a node
// that raises if anything differentiates through them, instead of silently acting as constants.
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/variable.h>

#include <string>
#include <utility>

namespace fusedmlp {

// Returns `grads` as they are when grad mode is off (a plain backward); otherwise detached
// copies behind a DelayedError(message) node. Undefined gradients stay undefined.
inline torch::autograd::variable_list once_differentiable(torch::autograd::variable_list grads,
                                                          const std::string& message) {
  if (!at::GradMode::is_enabled()) return grads;
  bool any_defined = false;
  for (at::Tensor& grad : grads) {
    if (grad.defined()) {
      grad = grad.detach();
      grad.set_requires_grad(true);
      any_defined = true;
    }
  }
  if (!any_defined) return grads;
  torch::autograd::DelayedError error(message, static_cast<int64_t>(grads.size()));
  return error.apply(std::move(grads));
}

}  // namespace fusedmlp
