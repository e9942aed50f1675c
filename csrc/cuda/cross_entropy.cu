// CUDA kernels for cross_entropy_fwd / cross_entropy_fwd_inplace (schemas in csrc/fusedmlp.cpp).
//
// One row per warp (C <= 1024, eight rows per block) or per 512-thread block (wider rows).
// Pass 1 reads the row once with an online softmax (per-thread running max m and sum s of
// exp(x - m), merged across threads), plus the coefficient sums that probability targets and
// label smoothing need before any gradient element can be written; pass 2 re-reads the row
// (from L2 for all but huge rows) and writes grad_j = scale * (A exp(x_j - m) / s - a_j),
// accumulating sum_j a_j (x_j - m) for the loss. Coefficients and loss are those of
// csrc/cpu/cross_entropy.cpp. Accumulation in at::opmath_type (float for half/bfloat16),
// 64-bit offsets. A row is never split across blocks: a batch of a few rows with a huge
// vocabulary uses few SMs (documented limitation).
//
// Out-of-range class indices trip a device assert, as in torch's CUDA kernels; the
// opt-in host check (validate=True / FUSEDMLP_VALIDATE_TARGETS=1) raises IndexError first.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include <fusedmlp/cross_entropy.h>

namespace fusedmlp {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpRowsPerBlock = 8;     // rows of width <= kWarpRowMaxC: one warp each
constexpr int kWarpRowMaxC = 1024;
constexpr int kBlockRowThreads = 512;    // wider rows: one block each

template <typename acc_t>
struct MaxSum {
  acc_t m, s;
};

template <typename acc_t>
__device__ __forceinline__ acc_t rescale(acc_t from, acc_t to) {
  // exp(from - to), with equal maxima (both -inf included) giving 1
  return from == to ? acc_t(1) : ::exp(from - to);
}

template <typename acc_t>
__device__ __forceinline__ MaxSum<acc_t> combine(MaxSum<acc_t> a, MaxSum<acc_t> b) {
  const acc_t m = a.m > b.m ? a.m : b.m;
  return {m, a.s * rescale(a.m, m) + b.s * rescale(b.m, m)};
}

// Reductions over the ROW_THREADS threads that share a row: shuffles within a warp, then
// (ROW_THREADS > 32) shared memory across the warps. Every thread gets the result.
template <int ROW_THREADS, typename acc_t>
__device__ __forceinline__ MaxSum<acc_t> reduce_max_sum(MaxSum<acc_t> v, MaxSum<acc_t>* smem) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    MaxSum<acc_t> other{__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)};
    v = combine(v, other);
  }
  if constexpr (ROW_THREADS > kWarp) {
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    __syncthreads();
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    v = smem[0];
    for (int w = 1; w < ROW_THREADS / kWarp; ++w) v = combine(v, smem[w]);
  }
  return v;
}

template <int ROW_THREADS, typename acc_t>
__device__ __forceinline__ acc_t reduce_sum(acc_t v, acc_t* smem) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if constexpr (ROW_THREADS > kWarp) {
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    __syncthreads();
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    v = smem[0];
    for (int w = 1; w < ROW_THREADS / kWarp; ++w) v += smem[w];
  }
  return v;
}

template <typename scalar_t, typename acc_t>
struct CrossEntropyArgs {
  const scalar_t* logits;   // [N, C] contiguous
  scalar_t* grad;           // [N, C] contiguous, may equal logits, or null
  const int64_t* target;    // [N] class indices, or null
  const scalar_t* prob;     // [N, C] probabilities, or null
  const acc_t* weight;      // [C], or null
  const acc_t* grad_scale;  // one element, or null
  acc_t* loss;              // [N]
  int64_t N, C, ignore_index;
  acc_t smoothing;          // 0 when label_smoothing <= 0
};

template <typename scalar_t, int ROW_THREADS>
__global__ void cross_entropy_fwd_kernel(CrossEntropyArgs<scalar_t, at::opmath_type<scalar_t>> p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ MaxSum<acc_t> smem_ms[ROW_THREADS > kWarp ? ROW_THREADS / kWarp : 1];
  __shared__ acc_t smem_sum[ROW_THREADS > kWarp ? ROW_THREADS / kWarp : 1];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= p.N) return;  // whole warps (ROW_THREADS == 32) or whole blocks leave together
  const int64_t C = p.C;
  const int tid = threadIdx.x;
  const scalar_t* x_row = p.logits + row * C;
  const scalar_t* q_row = p.prob != nullptr ? p.prob + row * C : nullptr;
  const bool smooth = p.smoothing > acc_t(0);
  const acc_t eps_per_class = p.smoothing / static_cast<acc_t>(C);
  const acc_t keep = acc_t(1) - p.smoothing;
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();

  // Pass 1: online max / sum-exp, and A (probabilities) or W (smoothing).
  MaxSum<acc_t> ms{neg_inf, acc_t(0)};
  acc_t coef = 0;
  for (int64_t j = tid; j < C; j += ROW_THREADS) {
    const acc_t x = static_cast<acc_t>(x_row[j]);
    if (x > ms.m) {
      ms.s = ms.s * rescale(ms.m, x) + acc_t(1);
      ms.m = x;
    } else if (x != neg_inf) {
      ms.s += ::exp(x - ms.m);  // NaN x makes s NaN
    }
    const acc_t w = p.weight != nullptr ? p.weight[j] : acc_t(1);
    if (q_row != nullptr) {
      coef += w * (keep * static_cast<acc_t>(q_row[j]) + eps_per_class);
    } else if (smooth) {
      coef += w;
    }
  }
  ms = reduce_max_sum<ROW_THREADS>(ms, smem_ms);
  coef = reduce_sum<ROW_THREADS>(coef, smem_sum);
  const acc_t m = ms.m, s = ms.s, log_s = ::log(s);
  const acc_t scale = p.grad_scale != nullptr ? *p.grad_scale : acc_t(1);

  int64_t t = -1;
  bool valid = true;
  acc_t w_t = 0, x_t = 0, A, c1;
  if (q_row != nullptr) {
    A = coef;
    c1 = A * scale / s;
  } else {
    t = p.target[row];
    valid = t != p.ignore_index;
    if (valid) {
      CUDA_KERNEL_ASSERT(t >= 0 && t < C && "Target is out of bounds");
      x_t = static_cast<acc_t>(x_row[t]);  // before pass 2 may overwrite the row
      w_t = p.weight != nullptr ? p.weight[t] : acc_t(1);
    }
    A = keep * w_t + (smooth ? eps_per_class * coef : acc_t(0));
    // Ignored rows: a zero gradient that is NaN where the softmax is (as torch's).
    c1 = valid ? A * scale / s : acc_t(0) / s;
  }
  // Every thread of the row has read x_t before pass 2 may overwrite it (in-place mode).
  if constexpr (ROW_THREADS > kWarp) {
    __syncthreads();
  } else {
    __syncwarp();
  }

  // Pass 2: the gradient, and sum_j a_j (x_j - m).
  acc_t dot = 0;
  const bool need_dot = q_row != nullptr || smooth;
  if (p.grad != nullptr || need_dot) {
    scalar_t* g_row = p.grad != nullptr ? p.grad + row * C : nullptr;
    for (int64_t j = tid; j < C; j += ROW_THREADS) {
      const acc_t x = static_cast<acc_t>(x_row[j]);
      const acc_t w = p.weight != nullptr ? p.weight[j] : acc_t(1);
      acc_t a;
      if (q_row != nullptr) {
        a = w * (keep * static_cast<acc_t>(q_row[j]) + eps_per_class);
        dot += a * (x - m);
      } else {
        if (smooth) dot += w * (x - m);
        a = (smooth ? eps_per_class * w : acc_t(0)) + (j == t ? keep * w_t : acc_t(0));
      }
      if (g_row != nullptr) {
        const acc_t e = x == neg_inf ? acc_t(0) : ::exp(x - m);
        // scale is inf when every target is ignored ("mean"): keep it off ignored rows
        g_row[j] = static_cast<scalar_t>(valid ? e * c1 - a * scale : e * c1);
      }
    }
    if (need_dot) dot = reduce_sum<ROW_THREADS>(dot, smem_sum);
  }
  if (tid == 0) {
    acc_t loss;
    if (q_row != nullptr) {
      loss = A * log_s - dot;
    } else if (!valid) {
      loss = 0;
    } else {
      const acc_t nll = log_s - (x_t - m);
      loss = smooth ? keep * w_t * nll + eps_per_class * (coef * log_s - dot) : w_t * nll;
    }
    p.loss[row] = loss;
  }
}

template <typename scalar_t>
void launch_cross_entropy(const CrossEntropyArgs<scalar_t, at::opmath_type<scalar_t>>& args) {
  auto stream = at::cuda::getCurrentCUDAStream();
  if (args.C <= kWarpRowMaxC) {
    const dim3 block(kWarp, kWarpRowsPerBlock);
    const int64_t blocks = (args.N + kWarpRowsPerBlock - 1) / kWarpRowsPerBlock;
    cross_entropy_fwd_kernel<scalar_t, kWarp><<<static_cast<unsigned>(blocks), block, 0, stream>>>(args);
  } else {
    cross_entropy_fwd_kernel<scalar_t, kBlockRowThreads>
        <<<static_cast<unsigned>(args.N), dim3(kBlockRowThreads, 1), 0, stream>>>(args);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor cross_entropy_cuda_impl(const at::Tensor& logits, const at::Tensor& grad, const at::Tensor& target,
                                   const std::optional<at::Tensor>& weight, int64_t ignore_index,
                                   double label_smoothing, const std::optional<at::Tensor>& grad_scale) {
  const int64_t N = logits.size(0), C = logits.size(1);
  TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), "cross_entropy (cuda): at most 2^31 - 1 rows, got ", N);
  const auto acc_type = cross_entropy_acc_type(logits.scalar_type());
  at::Tensor loss = at::empty({N}, logits.options().dtype(acc_type));
  if (N == 0) return loss;
  if (C == 0) return loss.zero_();
  const bool index_target = target.dim() == 1;
  const at::Tensor target_c = target.contiguous();
  const at::Tensor weight_acc = weight.has_value() ? weight->to(acc_type).contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "cross_entropy_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    CrossEntropyArgs<scalar_t, acc_t> args;
    args.logits = logits.const_data_ptr<scalar_t>();
    args.grad = grad.defined() ? grad.data_ptr<scalar_t>() : nullptr;
    args.target = index_target ? target_c.const_data_ptr<int64_t>() : nullptr;
    args.prob = index_target ? nullptr : target_c.const_data_ptr<scalar_t>();
    args.weight = weight_acc.defined() ? weight_acc.const_data_ptr<acc_t>() : nullptr;
    args.grad_scale = grad_scale.has_value() ? grad_scale->const_data_ptr<acc_t>() : nullptr;
    args.loss = loss.data_ptr<acc_t>();
    args.N = N;
    args.C = C;
    args.ignore_index = ignore_index;
    args.smoothing = label_smoothing > 0 ? static_cast<acc_t>(label_smoothing) : acc_t(0);
    launch_cross_entropy<scalar_t>(args);
  });
  return loss;
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_fwd_cuda(const at::Tensor& logits, const at::Tensor& target,
                                                          const std::optional<at::Tensor>& weight,
                                                          int64_t ignore_index, double label_smoothing,
                                                          const std::optional<at::Tensor>& grad_scale,
                                                          bool compute_grad) {
  check_cross_entropy_args(logits, target, weight, grad_scale, label_smoothing);
  TORCH_CHECK(logits.is_cuda(), "cross_entropy_fwd_cuda: expected CUDA tensors, got ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor logits_c = logits.contiguous();
  at::Tensor grad = compute_grad ? at::empty(logits.sizes(), logits.options()) : at::empty({0}, logits.options());
  at::Tensor loss = cross_entropy_cuda_impl(logits_c, compute_grad ? grad : at::Tensor(), target, weight,
                                            ignore_index, label_smoothing, grad_scale);
  return {loss, grad};
}

at::Tensor cross_entropy_fwd_inplace_cuda(at::Tensor& logits, const at::Tensor& target,
                                          const std::optional<at::Tensor>& weight, int64_t ignore_index,
                                          double label_smoothing, const std::optional<at::Tensor>& grad_scale) {
  check_cross_entropy_args(logits, target, weight, grad_scale, label_smoothing);
  TORCH_CHECK(logits.is_cuda(), "cross_entropy_fwd_inplace_cuda: expected CUDA tensors, got ", logits.device());
  TORCH_CHECK(logits.is_contiguous(), "cross_entropy_fwd_inplace: the in-place gradient mode needs contiguous "
              "logits [N, C]");
  const c10::cuda::CUDAGuard guard(logits.device());
  return cross_entropy_cuda_impl(logits, logits, target, weight, ignore_index, label_smoothing, grad_scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedmlp, CUDA, m) {
  m.impl("cross_entropy_fwd", &cross_entropy_fwd_cuda);
  m.impl("cross_entropy_fwd_inplace", &cross_entropy_fwd_inplace_cuda);
}

}  // namespace fusedmlp
