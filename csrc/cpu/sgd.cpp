// Fused SGD step on CPU: every tensor of a (device, dtype) group in one call. The tensors are
// cut into chunks of at most kChunkElements, and at::parallel_for hands the chunks of all
// tensors out together, so many small tensors and a few large ones both keep every thread
// busy. The loop is vectorized by the compiler (AVX2 + FMA when the CPU has them);
// fp16/bf16 update in fp32 and round once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include <fusedmlp/cpu_isa.h>
#include <fusedmlp/sgd.h>

namespace fusedmlp {
namespace {

constexpr int64_t kChunkElements = 16384;

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

struct SgdScalars {
  double weight_decay, momentum, dampening, lr;
  std::optional<double> grad_scale;
};

// The update over n contiguous elements, as a plain loop over sgd_math that the compiler
// vectorizes for whichever instruction set the caller is compiled for. The branches that
// change the arithmetic (weight decay, momentum mode, nesterov) are template parameters so
// each variant is a straight-line loop; maximize and unscaling are a multiply by +-1 and a
// divide by the scale (1 when absent), which are exact, so they need no variants.
enum class MomentumMode { kNone, kFirstStep, kSteady };

template <typename scalar_t, bool kWeightDecay, MomentumMode kMomentum, bool kNesterov>
C10_ALWAYS_INLINE void sgd_loop(scalar_t* __restrict__ param, const scalar_t* __restrict__ grad,
                                scalar_t* __restrict__ buf, int64_t n, bool maximize, const SgdScalars& s) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto c = SgdCoeffs<opmath_t>::from(s.weight_decay, s.momentum, s.dampening, s.lr);
  constexpr SgdFlags flags{kWeightDecay, kMomentum != MomentumMode::kNone, kNesterov, /*maximize=*/false,
                           kMomentum == MomentumMode::kFirstStep};
  const opmath_t sign = maximize ? opmath_t(-1) : opmath_t(1);
  const opmath_t scale = static_cast<opmath_t>(s.grad_scale.value_or(1.0));
  for (int64_t i = 0; i < n; ++i) {
    opmath_t p = static_cast<opmath_t>(param[i]);
    const opmath_t g = static_cast<opmath_t>(grad[i]) / scale * sign;
    opmath_t b = kMomentum == MomentumMode::kSteady ? static_cast<opmath_t>(buf[i]) : opmath_t(0);
    sgd_math(p, g, b, c, flags, ScalarMadd{});
    param[i] = static_cast<scalar_t>(p);
    if constexpr (kMomentum != MomentumMode::kNone) buf[i] = static_cast<scalar_t>(b);
  }
}

// Maps the runtime flags onto the sgd_loop variant; Loop is the instruction-set wrapper.
template <typename scalar_t, template <typename, bool, MomentumMode, bool> class Loop>
void dispatch_sgd_loop(scalar_t* param, const scalar_t* grad, scalar_t* buf, int64_t n, const SgdFlags& f,
                       const SgdScalars& s) {
  auto with_momentum = [&](auto weight_decay) {
    constexpr bool kWd = decltype(weight_decay)::value;
    if (!f.has_momentum) return Loop<scalar_t, kWd, MomentumMode::kNone, false>::run(param, grad, buf, n, f.maximize, s);
    if (f.first_step) {
      if (f.nesterov) return Loop<scalar_t, kWd, MomentumMode::kFirstStep, true>::run(param, grad, buf, n, f.maximize, s);
      return Loop<scalar_t, kWd, MomentumMode::kFirstStep, false>::run(param, grad, buf, n, f.maximize, s);
    }
    if (f.nesterov) return Loop<scalar_t, kWd, MomentumMode::kSteady, true>::run(param, grad, buf, n, f.maximize, s);
    return Loop<scalar_t, kWd, MomentumMode::kSteady, false>::run(param, grad, buf, n, f.maximize, s);
  };
  if (f.has_weight_decay) return with_momentum(std::true_type{});
  return with_momentum(std::false_type{});
}

template <typename scalar_t, bool kWd, MomentumMode kMomentum, bool kNesterov>
struct BaselineLoop {
  static void run(scalar_t* param, const scalar_t* grad, scalar_t* buf, int64_t n, bool maximize,
                  const SgdScalars& s) {
    sgd_loop<scalar_t, kWd, kMomentum, kNesterov>(param, grad, buf, n, maximize, s);
  }
};

#ifdef FUSEDMLP_X86
// ATen picks AVX2/AVX-512 kernels at run time, and so does this (cpu_isa.h): the same loops,
// compiled for AVX2 + FMA, chosen when the CPU has them. FMA also matches ATen's vectorized
// add(alpha=), which is an fmadd.
template <typename scalar_t, bool kWd, MomentumMode kMomentum, bool kNesterov>
struct Avx2Loop {
  FUSEDMLP_AVX2_FMA static void run(scalar_t* param, const scalar_t* grad, scalar_t* buf, int64_t n, bool maximize,
                                    const SgdScalars& s) {
    sgd_loop<scalar_t, kWd, kMomentum, kNesterov>(param, grad, buf, n, maximize, s);
  }
};
#endif

template <typename scalar_t>
void sgd_chunk(scalar_t* param, const scalar_t* grad, scalar_t* buf, int64_t n, const SgdFlags& flags,
               const SgdScalars& s) {
#ifdef FUSEDMLP_X86
  if (cpu::has_avx2_fma()) return dispatch_sgd_loop<scalar_t, Avx2Loop>(param, grad, buf, n, flags, s);
#endif
  dispatch_sgd_loop<scalar_t, BaselineLoop>(param, grad, buf, n, flags, s);
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
  const SgdScalars scalars{weight_decay, momentum, dampening, lr,
                           grad_scale.has_value() ? std::optional<double>(read_scalar(grad_scale)) : std::nullopt};

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
                            ch.end - ch.begin, flags, scalars);
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
