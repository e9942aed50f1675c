// The differentiable softmax-cross-entropy op `fusedmlp::cross_entropy` over [N, C] logits:
// the reduction and the "mean" denominator around cross_entropy_fwd, with autograd in C++.
//
// Why C++: with a small batch the kernel is a few microseconds, and the same graph built from
// Python (a torch.autograd.Function, the denominator's three ATen calls, the reduction, a
// Python backward node) costs ten times that. This is fusedmlp/autograd/cross_entropy.py's
// CrossEntropyFunction (same saved tensor, same backward) for the backends whose kernels are
// C++; the opt-in in-place mode stays there.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include <fusedmlp/cross_entropy.h>
#include <fusedmlp/once_differentiable.h>

namespace fusedmlp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

enum class Reduction : int64_t { None = 0, Mean = 1, Sum = 2 };

Reduction parse_reduction(c10::string_view reduction) {
  if (reduction == "none") return Reduction::None;
  if (reduction == "mean") return Reduction::Mean;
  if (reduction == "sum") return Reduction::Sum;
  TORCH_CHECK_VALUE(false, reduction, " is not a valid value for reduction");
}

using CrossEntropyFwdSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                   const std::optional<at::Tensor>&, int64_t, double,
                                                                   const std::optional<at::Tensor>&, bool);

std::tuple<at::Tensor, at::Tensor> call_cross_entropy_fwd(const at::Tensor& logits, const at::Tensor& target,
                                                          const std::optional<at::Tensor>& weight,
                                                          int64_t ignore_index, double label_smoothing,
                                                          const std::optional<at::Tensor>& grad_scale,
                                                          bool compute_grad) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fusedmlp::cross_entropy_fwd", "")
                             .typed<CrossEntropyFwdSignature>();
  return op.call(logits, target, weight, ignore_index, label_smoothing, grad_scale, compute_grad);
}

// t in `dtype`, without calling Tensor::to when it already is: below autograd `to` is a
// dispatcher op that returns its input, which torch's schema checks (opcheck) reject.
at::Tensor as_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// Whether t is a real tensor (not a fake or functionalized one, whose data cannot be read or
// written behind the tracer's back).
bool is_plain(const at::Tensor& t) {
  constexpr auto traced = c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::Functionalize});
  return !t.key_set().has_any(traced);
}

bool is_plain_cpu(const at::Tensor& t) {
  return t.is_cpu() && is_plain(t);
}

void scale_grad_unless_one_(at::Tensor& grad, const at::Tensor& scale) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fusedmlp::scale_grad_unless_one_", "")
                             .typed<void(at::Tensor&, const at::Tensor&)>();
  op.call(grad, scale);
}

// Whether grad_output is a real CPU scalar equal to 1, as from loss.backward(): then the saved
// gradient is the answer as it is. Reading a CPU value is no device sync; under tracing the
// multiply is kept.
bool is_plain_cpu_one(const at::Tensor& grad_output) {
  return is_plain_cpu(grad_output) && grad_output.dim() == 0 && grad_output.item<double>() == 1.0;
}

using MeanDenominatorSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&,
                                                                     const std::optional<at::Tensor>&, int64_t,
                                                                     at::ScalarType);
using ReduceSignature = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, at::ScalarType);

// torch's reduction of the per-row losses, for both entry points (with and without autograd):
// the "mean" denominator is known before the kernel runs (its gradient is scaled by it), the
// sum after. Both are fusedmlp ops on the device (no host sync; one or two launches each where
// ATen needs five in all); on real CPU tensors their CPU kernels are called directly, as the
// dispatcher would cost more than their loops over a small batch.
struct LossReduction {
  Reduction reduction;
  bool plain_cpu;
  std::optional<at::Tensor> denominator;  // "mean": [1], and its reciprocal, the gradient's scale
  std::optional<at::Tensor> reciprocal;

  LossReduction(Reduction r, const at::Tensor& logits, const at::Tensor& target,
                const std::optional<at::Tensor>& weight, int64_t ignore_index, at::ScalarType acc)
      : reduction(r), plain_cpu(is_plain_cpu(logits) && is_plain_cpu(target)) {
    if (r != Reduction::Mean) return;
    if (plain_cpu) {
      std::tie(denominator, reciprocal) = cross_entropy_mean_denominator_cpu(target, weight, ignore_index, acc);
      return;
    }
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fusedmlp::cross_entropy_mean_denominator", "")
                               .typed<MeanDenominatorSignature>();
    std::tie(denominator, reciprocal) = op.call(target, weight, ignore_index, acc);
  }

  // The reduced loss (0-d) or, for "none", the per-row losses, in `dtype` (the logits').
  at::Tensor reduce(const at::Tensor& loss_rows, at::ScalarType dtype) const {
    if (reduction == Reduction::None) return as_dtype(loss_rows, dtype);
    if (plain_cpu) return cross_entropy_reduce_cpu(loss_rows, denominator, dtype);
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("fusedmlp::cross_entropy_reduce", "").typed<ReduceSignature>();
    return op.call(loss_rows, denominator, dtype);
  }
};

struct CrossEntropyAutogradFunction : public torch::autograd::Function<CrossEntropyAutogradFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                            const std::optional<at::Tensor>& weight, int64_t ignore_index, double label_smoothing,
                            Reduction reduction, bool compute_grad) {
    // Checked before the denominator reads the targets and weights, so bad input gets the
    // kernel's messages (and nothing runs).
    check_cross_entropy_args(logits, target, weight, std::nullopt, label_smoothing);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const at::ScalarType acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const LossReduction reduce(reduction, logits, target, weight, ignore_index, acc);
    auto [loss_rows, grad] = call_cross_entropy_fwd(logits, target, weight, ignore_index, label_smoothing,
                                                    reduce.reciprocal, compute_grad);
    ctx->saved_data["reduction"] = static_cast<int64_t>(reduction);
    if (compute_grad) ctx->save_for_backward({grad});
    return reduce.reduce(loss_rows, logits.scalar_type());
  }

  // Gradients in forward's argument order; only the logits get one.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    TORCH_CHECK(!saved.empty(),
                "fusedmlp::cross_entropy: the forward ran without computing the logits gradient (grad mode was off "
                "or the logits did not require grad)");
    const at::Tensor& grad = saved[0];
    const at::Tensor& grad_output = grad_outputs[0];
    at::Tensor grad_logits;
    const bool per_row = ctx->saved_data["reduction"].toInt() == static_cast<int64_t>(Reduction::None);
    if (is_plain_cpu_one(grad_output)) {
      // Autograd never writes into incoming gradients, and AccumulateGrad copies a gradient
      // that is still saved here (retain_graph=True) instead of adopting it.
      grad_logits = grad;
    } else if (!per_row && !torch::autograd::get_current_graph_task_keep_graph() && is_plain(grad) &&
               is_plain(grad_output)) {
      // The graph is freed after this backward, so the saved gradient may become the answer:
      // scaled in place, and only when grad_output is not 1, which is read on the device (no
      // sync), so loss.backward() on a GPU skips a logits-sized read and write.
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      grad_logits = grad;
      scale_grad_unless_one_(grad_logits, as_dtype(grad_output, grad.scalar_type()).reshape({1}));
    } else {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      const at::Tensor scale = as_dtype(grad_output, grad.scalar_type());
      grad_logits = grad * (per_row ? scale.unsqueeze(1) : scale.reshape({}));
    }
    variable_list grads(7);
    grads[0] = std::move(grad_logits);
    return once_differentiable(
        std::move(grads),
        "fusedmlp::cross_entropy: trying to differentiate twice; the fused cross-entropy has no double backward");
  }
};

at::Tensor cross_entropy_autograd(const at::Tensor& logits, const at::Tensor& target,
                                  const std::optional<at::Tensor>& weight, int64_t ignore_index,
                                  double label_smoothing, c10::string_view reduction) {
  const bool compute_grad = at::GradMode::is_enabled() && logits.requires_grad();
  return CrossEntropyAutogradFunction::apply(logits, target, weight, ignore_index, label_smoothing,
                                             parse_reduction(reduction), compute_grad);
}

// Below autograd (inference mode, or tensors that reach the op without autograd): the loss only.
at::Tensor cross_entropy_forward_only(const at::Tensor& logits, const at::Tensor& target,
                                      const std::optional<at::Tensor>& weight, int64_t ignore_index,
                                      double label_smoothing, c10::string_view reduction) {
  const Reduction r = parse_reduction(reduction);
  check_cross_entropy_args(logits, target, weight, std::nullopt, label_smoothing);
  const at::ScalarType acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const LossReduction reduce(r, logits, target, weight, ignore_index, acc);
  const at::Tensor loss_rows =
      std::get<0>(call_cross_entropy_fwd(logits, target, weight, ignore_index, label_smoothing, std::nullopt, false));
  return reduce.reduce(loss_rows, logits.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedmlp, Autograd, m) { m.impl("cross_entropy", &cross_entropy_autograd); }

TORCH_LIBRARY_IMPL(fusedmlp, CompositeExplicitAutograd, m) {
  m.impl("cross_entropy", &cross_entropy_forward_only);
}

}  // namespace fusedmlp
