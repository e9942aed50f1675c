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

// torch's "mean" denominator, on the device (no host sync): the summed weight of the targets
// that are not ignored for class indices; the number of rows for probabilities (0 when the
// input is empty, so that the mean is NaN as in torch).
at::Tensor mean_denominator(const at::Tensor& target, const std::optional<at::Tensor>& weight, int64_t ignore_index,
                            int64_t num_classes, at::ScalarType acc) {
  const auto options = target.options().dtype(acc);
  if (target.dim() == 2) {
    return at::full({}, target.size(1) > 0 ? target.size(0) : 0, options);
  }
  const at::Tensor valid = target.ne(ignore_index);
  if (!weight.has_value()) return valid.sum(acc);
  // The clamp only keeps the gather in bounds: out-of-range targets are rejected (CPU) or
  // validated on request (GPU) before this point.
  const at::Tensor weight_of_target =
      as_dtype(*weight, acc).gather(0, target.clamp(0, std::max<int64_t>(num_classes - 1, 0)));
  return at::where(valid, weight_of_target, at::zeros({}, options)).sum();
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

// On real CPU tensors the "mean" denominator and the reduction are read and written directly:
// a loop over a batch's targets or losses costs less than one of the five ATen calls
// (denominator, reciprocal, reshape, sum, divide) it replaces, and together those were a third
// of the op for a small batch. Same values as mean_denominator / sum (up to summation order).
double cpu_mean_denominator(const at::Tensor& target, const std::optional<at::Tensor>& weight, int64_t ignore_index,
                            int64_t num_classes) {
  if (target.dim() == 2) return target.size(1) > 0 ? static_cast<double>(target.size(0)) : 0.0;
  const at::Tensor target_c = target.contiguous();
  const int64_t* t = target_c.const_data_ptr<int64_t>();
  const at::Tensor weight_c = weight.has_value() ? as_dtype(*weight, at::kDouble).contiguous() : at::Tensor();
  const double* w = weight_c.defined() ? weight_c.const_data_ptr<double>() : nullptr;
  double sum = 0;
  for (int64_t i = 0; i < target_c.numel(); ++i) {
    // Out-of-range targets add nothing here; the kernel rejects them right after.
    if (t[i] != ignore_index && t[i] >= 0 && t[i] < num_classes) sum += w != nullptr ? w[t[i]] : 1.0;
  }
  return sum;
}

// A CPU tensor of shape `sizes` and dtype `acc` holding `value` (in the dtype's precision).
at::Tensor cpu_scalar(double value, at::IntArrayRef sizes, at::ScalarType acc) {
  at::Tensor t = at::empty(sizes, at::TensorOptions().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "cpu_scalar", [&] { t.mutable_data_ptr<scalar_t>()[0] = static_cast<scalar_t>(value); });
  return t;
}

// The 0-d sum of per-row losses (acc dtype, contiguous [N]), divided by `denominator`. The sum
// runs in double: a plain float loop would lose more than torch's cascade sum on big batches.
at::Tensor cpu_reduce_rows(const at::Tensor& loss_rows, double denominator) {
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES(loss_rows.scalar_type(), "cpu_reduce_rows", [&] {
    const scalar_t* rows = loss_rows.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < loss_rows.numel(); ++i) total += static_cast<double>(rows[i]);
  });
  return cpu_scalar(total / denominator, {}, loss_rows.scalar_type());
}

// torch's reduction of the per-row losses, for both entry points (with and without autograd):
// the "mean" denominator is known before the kernel runs (its gradient is scaled by it), the
// sum after. On real CPU tensors both are loops (see cpu_mean_denominator), elsewhere ATen ops
// on the device (no host sync).
struct LossReduction {
  Reduction reduction;
  bool plain_cpu;
  double cpu_denominator = 1.0;           // "mean" on real CPU tensors
  std::optional<at::Tensor> denominator;  // "mean" elsewhere

  LossReduction(Reduction r, const at::Tensor& logits, const at::Tensor& target,
                const std::optional<at::Tensor>& weight, int64_t ignore_index, at::ScalarType acc)
      : reduction(r), plain_cpu(is_plain_cpu(logits) && is_plain_cpu(target)) {
    if (r != Reduction::Mean) return;
    if (plain_cpu) {
      cpu_denominator = cpu_mean_denominator(target, weight, ignore_index, logits.size(1));
    } else {
      denominator = mean_denominator(target, weight, ignore_index, logits.size(1), acc);
    }
  }

  // What the kernel scales the gradient by: 1 / denominator for "mean", nothing otherwise.
  std::optional<at::Tensor> grad_scale(at::ScalarType acc) const {
    if (reduction != Reduction::Mean) return std::nullopt;
    return plain_cpu ? cpu_scalar(1.0 / cpu_denominator, {1}, acc) : denominator->reciprocal().reshape({1});
  }

  at::Tensor reduce(const at::Tensor& loss_rows) const {
    if (reduction == Reduction::None) return loss_rows;
    if (plain_cpu) return cpu_reduce_rows(loss_rows, cpu_denominator);
    return reduction == Reduction::Sum ? loss_rows.sum() : loss_rows.sum().div_(*denominator);
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
                                                    reduce.grad_scale(acc), compute_grad);
    ctx->saved_data["reduction"] = static_cast<int64_t>(reduction);
    if (compute_grad) ctx->save_for_backward({grad});
    return as_dtype(reduce.reduce(loss_rows), logits.scalar_type());
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
  return as_dtype(reduce.reduce(loss_rows), logits.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedmlp, Autograd, m) { m.impl("cross_entropy", &cross_entropy_autograd); }

TORCH_LIBRARY_IMPL(fusedmlp, CompositeExplicitAutograd, m) {
  m.impl("cross_entropy", &cross_entropy_forward_only);
}

}  // namespace fusedmlp
