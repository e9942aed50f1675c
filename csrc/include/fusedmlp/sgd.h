#pragma once
// Shared by the CPU and CUDA fused SGD kernels: the argument checks (so both devices reject
// bad input with the same torch-style messages) and the per-element update itself, written
// once so every kernel computes the same sequence of roundings as torch.optim.SGD(foreach=False).
#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <optional>

namespace fusedmlp {

// Scalar coefficients of one fused SGD call, already in the math type T.
template <typename T>
struct SgdCoeffs {
  T weight_decay;
  T momentum;
  T one_minus_dampening;
  T neg_lr;
  T minus_one;

  // From torch.optim.SGD's hyperparameters.
  static SgdCoeffs from(double weight_decay, double momentum, double dampening, double lr) {
    return {static_cast<T>(weight_decay), static_cast<T>(momentum), static_cast<T>(1.0 - dampening),
            static_cast<T>(-lr), T(-1)};
  }
};

struct SgdFlags {
  bool has_weight_decay;
  bool has_momentum;
  bool nesterov;
  bool maximize;
  bool first_step;  // momentum buffer starts as the (decayed) gradient
};

// a * b + c (nvcc, and the CPU kernel's AVX2+FMA build, contract it to one fma, which is what
// ATen's vectorized add(alpha=) kernel computes).
struct ScalarMadd {
  template <typename T>
  C10_HOST_DEVICE T operator()(T a, T b, T c) const {
    return a * b + c;
  }
};

// One element (or one vector of elements) of torch.optim.SGD's update:
//   g = maximize ? -grad : grad;  g += weight_decay * param
//   buf = first_step ? g : momentum * buf + (1 - dampening) * g
//   g = nesterov ? g + momentum * buf : buf;  param -= lr * g
// `buf` is only read or written when flags.has_momentum.
template <typename T, typename Madd>
C10_HOST_DEVICE inline void sgd_math(T& param, T grad, T& buf, const SgdCoeffs<T>& c, const SgdFlags& f,
                                     Madd madd) {
  T g = f.maximize ? grad * c.minus_one : grad;
  if (f.has_weight_decay) g = madd(param, c.weight_decay, g);
  if (f.has_momentum) {
    buf = f.first_step ? g : madd(g, c.one_minus_dampening, buf * c.momentum);
    g = f.nesterov ? madd(buf, c.momentum, g) : buf;
  }
  param = madd(g, c.neg_lr, param);
}

inline void check_fused_sgd_args(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                                 double momentum, const std::optional<at::Tensor>& lr_tensor,
                                 const std::optional<at::Tensor>& grad_scale,
                                 const std::optional<at::Tensor>& found_inf,
                                 const std::optional<at::Tensor>& first_step_skipped) {
  TORCH_CHECK(grads.size() == params.size(), "fused_sgd_: expected as many grads as params, got ", grads.size(),
              " and ", params.size());
  const bool has_momentum = momentum != 0.0;
  TORCH_CHECK(momentum_buffers.size() == (has_momentum ? params.size() : 0), "fused_sgd_: expected ",
              has_momentum ? params.size() : 0, " momentum buffers (", has_momentum ? "one per param" : "none",
              " when momentum is ", momentum, "), got ", momentum_buffers.size());
  if (params.empty()) return;
  const at::Tensor& first = params[0];
  TORCH_CHECK(at::isFloatingType(first.scalar_type()),
              "fused_sgd_: expected floating point params, got ", first.scalar_type());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    TORCH_CHECK(!p.is_sparse() && !g.is_sparse(), "fused_sgd_ does not support sparse gradients");
    TORCH_CHECK(p.scalar_type() == first.scalar_type() && p.device() == first.device(),
                "fused_sgd_: expected every param to have the dtype and device of the first (", first.scalar_type(),
                ", ", first.device(), "), but param ", i, " has ", p.scalar_type(), ", ", p.device());
    TORCH_CHECK(g.sizes() == p.sizes(), "fused_sgd_: grad ", i, " has shape ", g.sizes(), " but its param has ",
                p.sizes());
    TORCH_CHECK(g.scalar_type() == p.scalar_type() && g.device() == p.device(), "fused_sgd_: grad ", i,
                " must have the dtype and device of its param (", p.scalar_type(), ", ", p.device(), "), got ",
                g.scalar_type(), ", ", g.device());
    if (has_momentum) {
      const at::Tensor& b = momentum_buffers[i];
      TORCH_CHECK(b.sizes() == p.sizes() && b.scalar_type() == p.scalar_type() && b.device() == p.device(),
                  "fused_sgd_: momentum buffer ", i, " must match its param in shape, dtype and device");
    }
  }
  auto check_scalar = [&](const std::optional<at::Tensor>& t, const char* name) {
    if (!t.has_value()) return;
    TORCH_CHECK(t->numel() == 1, "fused_sgd_: ", name, " must be a 1-element tensor, got ", t->numel(),
                " elements");
    TORCH_CHECK(at::isFloatingType(t->scalar_type()), "fused_sgd_: ", name, " must be floating point, got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == first.device(), "fused_sgd_: ", name, " must be on the params' device ",
                first.device(), ", got ", t->device());
  };
  check_scalar(lr_tensor, "lr_tensor");
  check_scalar(grad_scale, "grad_scale");
  check_scalar(found_inf, "found_inf");
  check_scalar(first_step_skipped, "first_step_skipped");
}

}  // namespace fusedmlp
