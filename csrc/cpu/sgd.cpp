// Fused SGD step on CPU: every tensor of a (device, dtype) group in one call. The tensors are
// cut into chunks of at most kChunkElements, and at::parallel_for hands the chunks of all
// tensors out together, so many small tensors and a few large ones both keep every thread
// busy. fp32/fp64 run vectorized (at::vec); fp16/bf16 update in fp32 and round once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <vector>

#include <fusedmlp/sgd.h>

namespace fusedmlp {
namespace {

constexpr int64_t kChunkElements = 16384;

struct VecMadd {
  template <typename V>
  V operator()(const V& a, const V& b, const V& c) const {
    return at::vec::fmadd(a, b, c);
  }
};

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

template <typename scalar_t>
void sgd_chunk(scalar_t* param, const scalar_t* grad, scalar_t* buf, int64_t n, const SgdFlags& flags,
               double weight_decay, double momentum, double dampening, double lr, std::optional<double> grad_scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  const bool unscale = grad_scale.has_value();
  const SgdCoeffs<opmath_t> c{static_cast<opmath_t>(weight_decay), static_cast<opmath_t>(momentum),
                              static_cast<opmath_t>(1.0 - dampening), static_cast<opmath_t>(-lr),
                              opmath_t(-1)};
  const opmath_t scale = static_cast<opmath_t>(grad_scale.value_or(1.0));
  int64_t i = 0;
  if constexpr (!at::is_reduced_floating_point_v<scalar_t>) {
    using Vec = at::vec::Vectorized<scalar_t>;
    const SgdCoeffs<Vec> vc{Vec(c.weight_decay), Vec(c.momentum), Vec(c.one_minus_dampening), Vec(c.neg_lr),
                            Vec(c.minus_one)};
    const Vec grad_scale_vec(scale);
    Vec unused_buf(scalar_t(0));
    for (; i + Vec::size() <= n; i += Vec::size()) {
      Vec p = Vec::loadu(param + i);
      Vec g = Vec::loadu(grad + i);
      if (unscale) g = g / grad_scale_vec;
      Vec b = (flags.has_momentum && !flags.first_step) ? Vec::loadu(buf + i) : unused_buf;
      sgd_math(p, g, b, vc, flags, VecMadd{});
      p.store(param + i);
      if (flags.has_momentum) b.store(buf + i);
    }
  }
  for (; i < n; ++i) {
    opmath_t p = static_cast<opmath_t>(param[i]);
    opmath_t g = static_cast<opmath_t>(grad[i]);
    if (unscale) g = g / scale;
    opmath_t b = (flags.has_momentum && !flags.first_step) ? static_cast<opmath_t>(buf[i]) : opmath_t(0);
    sgd_math(p, g, b, c, flags, ScalarMadd{});
    param[i] = static_cast<scalar_t>(p);
    if (flags.has_momentum) buf[i] = static_cast<scalar_t>(b);
  }
}

double read_scalar(const std::optional<at::Tensor>& t) { return t->reshape({}).item<double>(); }

void fused_sgd_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                   double weight_decay, double momentum, const std::optional<at::Tensor>& lr_tensor, double lr,
                   double dampening, bool nesterov, bool maximize, bool is_first_step,
                   const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                   const std::optional<at::Tensor>& first_step_skipped) {
  check_fused_sgd_args(params, grads, momentum_buffers, momentum, lr_tensor, grad_scale, found_inf,
                       first_step_skipped);
  if (params.empty()) return;
  // On CPU these scalars are host memory: reading them is not a device sync.
  if (found_inf.has_value() && read_scalar(found_inf) != 0.0) return;
  const bool has_momentum = momentum != 0.0;
  const SgdFlags flags{weight_decay != 0.0, has_momentum, nesterov, maximize,
                       is_first_step || (first_step_skipped.has_value() && read_scalar(first_step_skipped) != 0.0)};
  if (lr_tensor.has_value()) lr = read_scalar(lr_tensor);
  const std::optional<double> grad_scale_value =
      grad_scale.has_value() ? std::optional<double>(read_scalar(grad_scale)) : std::nullopt;

  // Kernels walk contiguous memory; strided tensors are updated through contiguous copies
  // that are written back afterwards.
  const size_t count = params.size();
  std::vector<at::Tensor> work_params(count), work_grads(count), work_bufs(has_momentum ? count : 0);
  std::vector<Chunk> chunks;
  for (size_t t = 0; t < count; ++t) {
    work_params[t] = params[t].contiguous();
    work_grads[t] = grads[t].contiguous();
    if (has_momentum) work_bufs[t] = momentum_buffers[t].contiguous();
    const int64_t n = params[t].numel();
    for (int64_t begin = 0; begin < n; begin += kChunkElements) {
      chunks.push_back({static_cast<int64_t>(t), begin, std::min(n, begin + kChunkElements)});
    }
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_sgd_cpu", [&] {
    std::vector<scalar_t*> param_ptrs(count), buf_ptrs(count, nullptr);
    std::vector<const scalar_t*> grad_ptrs(count);
    for (size_t t = 0; t < count; ++t) {
      param_ptrs[t] = work_params[t].data_ptr<scalar_t>();
      grad_ptrs[t] = work_grads[t].const_data_ptr<scalar_t>();
      if (has_momentum) buf_ptrs[t] = work_bufs[t].data_ptr<scalar_t>();
    }
    at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t first, int64_t last) {
      for (int64_t k = first; k < last; ++k) {
        const Chunk& ch = chunks[k];
        scalar_t* buf = has_momentum ? buf_ptrs[ch.tensor] + ch.begin : nullptr;
        sgd_chunk<scalar_t>(param_ptrs[ch.tensor] + ch.begin, grad_ptrs[ch.tensor] + ch.begin, buf,
                            ch.end - ch.begin, flags, weight_decay, momentum, dampening, lr, grad_scale_value);
      }
    });
  });

  for (size_t t = 0; t < count; ++t) {
    if (!work_params[t].is_same(params[t])) params[t].copy_(work_params[t]);
    if (has_momentum && !work_bufs[t].is_same(momentum_buffers[t])) momentum_buffers[t].copy_(work_bufs[t]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedmlp, CPU, m) { m.impl("fused_sgd_", &fused_sgd_cpu); }

}  // namespace fusedmlp
