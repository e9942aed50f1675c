#pragma once
// Argument checks shared by the CPU and CUDA softmax-cross-entropy kernels, so both
// devices reject bad input with torch-style messages before anything is launched.
//
// The kernels see rows: logits [N, C]; target either class indices [N] (int64) or class
// probabilities [N, C] (logits' dtype); weight [C] (logits' dtype); grad_scale a one-element
// tensor in the accumulation dtype (float64 for float64 logits, float32 otherwise) that the
// gradient is multiplied by (1 / total weight for reduction="mean"), read on the device so
// no host sync is needed.
#include <ATen/ATen.h>

namespace fusedmlp {

inline at::ScalarType cross_entropy_acc_type(at::ScalarType logits_type) {
  return logits_type == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_cross_entropy_args(const at::Tensor& logits, const at::Tensor& target,
                                     const std::optional<at::Tensor>& weight,
                                     const std::optional<at::Tensor>& grad_scale, double label_smoothing) {
  TORCH_CHECK(logits.dim() == 2, "cross_entropy: expected logits of shape [N, C], got ", logits.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "cross_entropy: expected floating point logits, got ",
              logits.scalar_type());
  TORCH_CHECK(label_smoothing <= 1.0, "label_smoothing must be between 0.0 and 1.0. Got: ", label_smoothing);
  const int64_t N = logits.size(0), C = logits.size(1);
  TORCH_CHECK(target.device() == logits.device(),
              "cross_entropy: expected all tensors to be on the same device, but found ", target.device(), " and ",
              logits.device());
  if (target.dim() == 1) {
    TORCH_CHECK(target.scalar_type() == at::kLong, "expected target dtype to be Long or Byte, but got ",
                target.scalar_type());
    TORCH_CHECK_VALUE(target.size(0) == N, "Expected input batch_size (", N, ") to match target batch_size (",
                      target.size(0), ").");
  } else {
    TORCH_CHECK(target.dim() == 2, "cross_entropy: expected target of shape [N] or [N, C], got ", target.sizes());
    TORCH_CHECK(target.sizes() == logits.sizes(), "Expected target size ", logits.sizes(), ", got ",
                target.sizes());
    TORCH_CHECK(target.scalar_type() == logits.scalar_type(), "expected scalar type ", logits.scalar_type(),
                " but found ", target.scalar_type());
  }
  if (weight.has_value()) {
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == C, "weight tensor should be defined either for all ", C,
                " classes or no classes but got weight tensor of shape: ", weight->sizes());
    TORCH_CHECK(weight->scalar_type() == logits.scalar_type(), "expected scalar type ", logits.scalar_type(),
                " but found ", weight->scalar_type());
    TORCH_CHECK(weight->device() == logits.device(),
                "cross_entropy: expected all tensors to be on the same device, but found ", weight->device(),
                " and ", logits.device());
  }
  if (grad_scale.has_value()) {
    TORCH_CHECK(grad_scale->numel() == 1, "cross_entropy: expected a one-element grad_scale, got ",
                grad_scale->sizes());
    TORCH_CHECK(grad_scale->scalar_type() == cross_entropy_acc_type(logits.scalar_type()),
                "cross_entropy: expected grad_scale of dtype ", cross_entropy_acc_type(logits.scalar_type()),
                ", got ", grad_scale->scalar_type());
    TORCH_CHECK(grad_scale->device() == logits.device(),
                "cross_entropy: expected all tensors to be on the same device, but found ", grad_scale->device(),
                " and ", logits.device());
  }
}

inline void check_scale_grad_args(const at::Tensor& grad, const at::Tensor& scale) {
  TORCH_CHECK(grad.is_contiguous(), "scale_grad_unless_one_: expected a contiguous grad");
  TORCH_CHECK(scale.numel() == 1, "scale_grad_unless_one_: expected a one-element scale, got ", scale.numel(),
              " elements");
  TORCH_CHECK(scale.scalar_type() == grad.scalar_type() && scale.device() == grad.device(),
              "scale_grad_unless_one_: expected scale with grad's dtype and device, got ", scale.scalar_type(), " on ",
              scale.device(), " for ", grad.scalar_type(), " on ", grad.device());
}

// The "mean" reduction around the kernels (cross_entropy_mean_denominator, cross_entropy_reduce;
// schemas in csrc/fusedmlp.cpp). `dtype` is the accumulation dtype (float32 / float64).
inline void check_mean_denominator_args(const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                        at::ScalarType dtype) {
  TORCH_CHECK((target.dim() == 1 && target.scalar_type() == at::kLong) ||
                  (target.dim() == 2 && at::isFloatingType(target.scalar_type())),
              "cross_entropy_mean_denominator: expected class indices [N] (int64) or probabilities [N, C], got ",
              target.dim(), "-D ", target.scalar_type());
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "cross_entropy_mean_denominator: expected dtype float32 or float64, got ", dtype);
  if (weight.has_value()) {
    TORCH_CHECK(weight->dim() == 1 && at::isFloatingType(weight->scalar_type()),
                "cross_entropy_mean_denominator: expected a 1-D floating point weight, got ", weight->dim(), "-D ",
                weight->scalar_type());
    TORCH_CHECK(weight->device() == target.device(),
                "cross_entropy_mean_denominator: expected all tensors to be on the same device, but found ",
                weight->device(), " and ", target.device());
  }
}

inline void check_reduce_args(const at::Tensor& loss_rows, const std::optional<at::Tensor>& denominator,
                              at::ScalarType dtype) {
  TORCH_CHECK(loss_rows.dim() == 1 && (loss_rows.scalar_type() == at::kFloat || loss_rows.scalar_type() == at::kDouble),
              "cross_entropy_reduce: expected per-row losses [N] in float32 or float64, got ", loss_rows.dim(), "-D ",
              loss_rows.scalar_type());
  TORCH_CHECK(at::isFloatingType(dtype), "cross_entropy_reduce: expected a floating point dtype, got ", dtype);
  if (denominator.has_value()) {
    TORCH_CHECK(denominator->numel() == 1 && denominator->scalar_type() == loss_rows.scalar_type() &&
                    denominator->device() == loss_rows.device(),
                "cross_entropy_reduce: expected a one-element denominator with the losses' dtype and device, got ",
                denominator->sizes(), " ", denominator->scalar_type(), " on ", denominator->device());
  }
}

// The CPU kernels of those two ops, also called directly (no dispatcher) by the C++ autograd
// op on plain CPU tensors, where the dispatch would cost more than the loop (csrc/cpu/cross_entropy.cpp).
std::tuple<at::Tensor, at::Tensor> cross_entropy_mean_denominator_cpu(const at::Tensor& target,
                                                                      const std::optional<at::Tensor>& weight,
                                                                      int64_t ignore_index, at::ScalarType dtype);
at::Tensor cross_entropy_reduce_cpu(const at::Tensor& loss_rows, const std::optional<at::Tensor>& denominator,
                                    at::ScalarType dtype);

}  // namespace fusedmlp
