// CUDA kernels for cross_entropy_fwd / cross_entropy_fwd_inplace (schemas in csrc/fusedmlp.cpp).
//
// One row per thread (C <= 16, 256 rows per block), per warp (C <= 1024, eight rows per
// block), or per block (wider rows: in registers, see cross_entropy_resident_row_kernel, or
// 512 threads walking the row).
// Pass 1 reads the row once with an online softmax (per-thread running max m and sum s of
// exp(x - m), merged across threads), plus the coefficient sums that probability targets and
// label smoothing need before any gradient element can be written; pass 2 re-reads the row
// (from L2 for all but huge rows) and writes grad_j = scale * (A exp(x_j - m) / s - a_j),
// accumulating sum_j a_j (x_j - m) for the loss. Coefficients and loss are those of
// csrc/cpu/cross_entropy.cpp. Accumulation in at::opmath_type (float for half/bfloat16),
// 64-bit offsets. A batch of few, very wide rows (fewer rows than about four blocks per SM,
// at least kSplitMinC classes) splits each row across blocks in three launches (per-range
// stats; gradient from the combined stats; loss), combined in a fixed order.
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

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include <fusedmlp/cross_entropy.h>
#include <fusedmlp/cuda_utils.cuh>

namespace fusedmlp {
namespace {

constexpr int kWarp = 32;
// Rows of width <= kThreadRowMaxC: one thread each (a warp per row would leave most lanes
// idle and need 32x the threads, e.g. for the tutorial's 2 or 3 classes at a batch of 2^17).
constexpr int kThreadRowsPerBlock = 256;
constexpr int kThreadRowMaxC = 16;
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
// (ROW_THREADS > 32) shared memory across the warps. Every thread gets the result. A row of
// one thread has nothing to reduce (and its warp's other lanes are other rows).
template <int ROW_THREADS, typename acc_t>
__device__ __forceinline__ MaxSum<acc_t> reduce_max_sum(MaxSum<acc_t> v, MaxSum<acc_t>* smem) {
  if constexpr (ROW_THREADS > 1) {
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      MaxSum<acc_t> other{__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)};
      v = combine(v, other);
    }
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

struct AddOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};

// max(a, b) that skips a NaN b, as `x > m ? x : m` does (the running max a never holds one).
struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return b > a ? b : a;
  }
};

template <int ROW_THREADS, typename acc_t, typename Op>
__device__ __forceinline__ acc_t reduce_row(acc_t v, acc_t* smem, Op op) {
  if constexpr (ROW_THREADS > 1) {
    for (int offset = kWarp / 2; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  if constexpr (ROW_THREADS > kWarp) {
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    __syncthreads();
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    v = smem[0];
    for (int w = 1; w < ROW_THREADS / kWarp; ++w) v = op(v, smem[w]);
  }
  return v;
}

template <int ROW_THREADS, typename acc_t>
__device__ __forceinline__ acc_t reduce_sum(acc_t v, acc_t* smem) {
  return reduce_row<ROW_THREADS>(v, smem, AddOp{});
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

// The pieces of one row's computation, shared by the one-block-per-row kernel and the
// split-row kernels. Every function is called by all ROW_THREADS threads of the row.
template <typename acc_t>
struct RowStats {
  acc_t m, s, coef;  // max, sum of exp(x - m), sum of the coefficients known before pass 2
};

template <typename acc_t>
struct RowTarget {
  int64_t t;  // class index, -1 for probability targets
  bool valid;
  acc_t w_t;  // the target's weight (0 when ignored)
};

template <typename acc_t>
struct RowConstants {
  acc_t keep, eps_per_class, scale;
  bool smooth;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ RowConstants<acc_t> row_constants(const CrossEntropyArgs<scalar_t, acc_t>& p) {
  return {acc_t(1) - p.smoothing, p.smoothing / static_cast<acc_t>(p.C),
          p.grad_scale != nullptr ? *p.grad_scale : acc_t(1), p.smoothing > acc_t(0)};
}

// Column j's share of the coefficient sum pass 1 needs: of A = sum_j a_j (probabilities) or
// of W = sum_j w_j (smoothing); 0 otherwise.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t pass1_coefficient(const CrossEntropyArgs<scalar_t, acc_t>& p,
                                                   const RowConstants<acc_t>& k, const scalar_t* q_row, int64_t j) {
  if (q_row == nullptr && !k.smooth) return acc_t(0);
  const acc_t w = p.weight != nullptr ? p.weight[j] : acc_t(1);
  return q_row != nullptr ? w * (k.keep * static_cast<acc_t>(q_row[j]) + k.eps_per_class) : w;
}

// Pass 1 over columns [begin, end): online max / sum-exp, and A (probabilities) or W (smoothing).
template <int ROW_THREADS, typename scalar_t, typename acc_t>
__device__ __forceinline__ RowStats<acc_t> row_stats(const CrossEntropyArgs<scalar_t, acc_t>& p,
                                                     const RowConstants<acc_t>& k, const scalar_t* x_row,
                                                     const scalar_t* q_row, int64_t begin, int64_t end,
                                                     MaxSum<acc_t>* smem_ms, acc_t* smem_sum) {
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  MaxSum<acc_t> ms{neg_inf, acc_t(0)};
  acc_t coef = 0;
  for (int64_t j = begin + threadIdx.x; j < end; j += ROW_THREADS) {
    const acc_t x = static_cast<acc_t>(x_row[j]);
    if (x > ms.m) {
      ms.s = ms.s * rescale(ms.m, x) + acc_t(1);
      ms.m = x;
    } else if (x != neg_inf) {
      ms.s += ::exp(x - ms.m);  // NaN x makes s NaN
    }
    coef += pass1_coefficient(p, k, q_row, j);
  }
  ms = reduce_max_sum<ROW_THREADS>(ms, smem_ms);
  coef = reduce_sum<ROW_THREADS>(coef, smem_sum);
  return {ms.m, ms.s, coef};
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ RowTarget<acc_t> row_target(const CrossEntropyArgs<scalar_t, acc_t>& p, int64_t row) {
  if (p.prob != nullptr) return {-1, true, acc_t(0)};
  const int64_t t = p.target[row];
  const bool valid = t != p.ignore_index;
  if (!valid) return {t, false, acc_t(0)};
  CUDA_KERNEL_ASSERT(t >= 0 && t < p.C && "Target is out of bounds");
  return {t, true, p.weight != nullptr ? p.weight[t] : acc_t(1)};
}

// (A, c1): A = sum_j a_j and the gradient's softmax factor c1 = A * scale / s.
template <typename acc_t>
__device__ __forceinline__ void row_coefficients(const RowStats<acc_t>& st, const RowTarget<acc_t>& tg,
                                                 const RowConstants<acc_t>& k, bool prob, acc_t& A, acc_t& c1) {
  if (prob) {
    A = st.coef;
    c1 = A * k.scale / st.s;
  } else {
    A = k.keep * tg.w_t + (k.smooth ? k.eps_per_class * st.coef : acc_t(0));
    // Ignored rows: a zero gradient that is NaN where the softmax is (as torch's).
    c1 = tg.valid ? A * k.scale / st.s : acc_t(0) / st.s;
  }
}

// Column j's coefficient a_j in the gradient and loss, adding a_j (x_j - m) (the part of it
// that is not the target's) to `dot` when probability targets or smoothing need that sum.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t column_coefficient(const CrossEntropyArgs<scalar_t, acc_t>& p,
                                                    const RowConstants<acc_t>& k, const RowTarget<acc_t>& tg,
                                                    const scalar_t* q_row, int64_t j, acc_t x, acc_t m, acc_t& dot) {
  const acc_t w = p.weight != nullptr ? p.weight[j] : acc_t(1);
  if (q_row != nullptr) {
    const acc_t a = w * (k.keep * static_cast<acc_t>(q_row[j]) + k.eps_per_class);
    dot += a * (x - m);
    return a;
  }
  if (k.smooth) dot += w * (x - m);
  return (k.smooth ? k.eps_per_class * w : acc_t(0)) + (j == tg.t ? k.keep * tg.w_t : acc_t(0));
}

// grad_j = scale * (A exp(x_j - m) / s - a_j) = exp(x_j - m) c1 - a_j scale.
template <typename acc_t>
__device__ __forceinline__ acc_t gradient_element(const RowConstants<acc_t>& k, const RowTarget<acc_t>& tg, acc_t x,
                                                  acc_t m, acc_t c1, acc_t a) {
  const acc_t e = x == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : ::exp(x - m);
  // scale is inf when every target is ignored ("mean"): keep it off ignored rows
  return tg.valid ? e * c1 - a * k.scale : e * c1;
}

// Pass 2 over columns [begin, end): writes the gradient (when p.grad is set) and returns
// sum_j a_j (x_j - m) over those columns, reduced over the row's threads.
template <int ROW_THREADS, typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t row_grad(const CrossEntropyArgs<scalar_t, acc_t>& p, const RowConstants<acc_t>& k,
                                          const RowTarget<acc_t>& tg, int64_t row, const scalar_t* x_row,
                                          const scalar_t* q_row, int64_t begin, int64_t end, acc_t m, acc_t c1,
                                          acc_t* smem_sum) {
  acc_t dot = 0;
  const bool need_dot = q_row != nullptr || k.smooth;
  if (p.grad == nullptr && !need_dot) return dot;
  scalar_t* g_row = p.grad != nullptr ? p.grad + row * p.C : nullptr;
  for (int64_t j = begin + threadIdx.x; j < end; j += ROW_THREADS) {
    const acc_t x = static_cast<acc_t>(x_row[j]);
    const acc_t a = column_coefficient(p, k, tg, q_row, j, x, m, dot);
    if (g_row != nullptr) g_row[j] = static_cast<scalar_t>(gradient_element(k, tg, x, m, c1, a));
  }
  return need_dot ? reduce_sum<ROW_THREADS>(dot, smem_sum) : dot;
}

template <typename acc_t>
__device__ __forceinline__ acc_t row_loss(const RowStats<acc_t>& st, const RowTarget<acc_t>& tg,
                                          const RowConstants<acc_t>& k, bool prob, acc_t A, acc_t dot,
                                          acc_t x_t) {
  const acc_t log_s = ::log(st.s);
  if (prob) return A * log_s - dot;
  if (!tg.valid) return acc_t(0);
  const acc_t nll = log_s - (x_t - st.m);
  return k.smooth ? k.keep * tg.w_t * nll + k.eps_per_class * (st.coef * log_s - dot) : tg.w_t * nll;
}

template <typename scalar_t, int ROW_THREADS>
__global__ void cross_entropy_fwd_kernel(CrossEntropyArgs<scalar_t, at::opmath_type<scalar_t>> p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ MaxSum<acc_t> smem_ms[ROW_THREADS > kWarp ? ROW_THREADS / kWarp : 1];
  __shared__ acc_t smem_sum[ROW_THREADS > kWarp ? ROW_THREADS / kWarp : 1];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  // Whole warps (ROW_THREADS == 32) or whole blocks leave together; a one-thread row shares
  // no shuffle or barrier with the threads that leave.
  if (row >= p.N) return;
  const scalar_t* x_row = p.logits + row * p.C;
  const scalar_t* q_row = p.prob != nullptr ? p.prob + row * p.C : nullptr;
  const RowConstants<acc_t> k = row_constants(p);
  const RowStats<acc_t> st = row_stats<ROW_THREADS>(p, k, x_row, q_row, 0, p.C, smem_ms, smem_sum);
  const RowTarget<acc_t> tg = row_target(p, row);
  const acc_t x_t = tg.valid && q_row == nullptr ? static_cast<acc_t>(x_row[tg.t]) : acc_t(0);
  acc_t A, c1;
  row_coefficients(st, tg, k, q_row != nullptr, A, c1);
  // Every thread of the row has read x_t before pass 2 may overwrite it (in-place mode).
  if constexpr (ROW_THREADS > kWarp) {
    __syncthreads();
  } else if constexpr (ROW_THREADS == kWarp) {
    __syncwarp();
  }
  const acc_t dot = row_grad<ROW_THREADS>(p, k, tg, row, x_row, q_row, 0, p.C, st.m, c1, smem_sum);
  if (threadIdx.x == 0) p.loss[row] = row_loss(st, tg, k, q_row != nullptr, A, dot, x_t);
}

// Rows up to kResidentVecs 16-byte vectors per thread of one block: each thread issues all
// of its loads before it uses any, so the whole row is in flight at once, the logits are read
// from memory exactly once, and pass 2 works on registers. (The kernel above reads the row
// twice with scalar loads; at 4096 x 8192 fp32 on the H200 it, with the backward multiply,
// ran at 0.73x eager.) Needs C a multiple of the vector width and 16-byte aligned logits and
// gradient rows (resident_row_threads checks).
//
// HARD_TARGETS: class-index targets without label smoothing (F.cross_entropy's default, and
// issue 3's benchmark). Every column's coefficient a_j is then 0 except the target's, so the
// kernel needs no coefficient sums, no dot product and no per-column target test: pass 2 is
// exp, multiply, store, and the thread that stored the target's column rewrites that one
// element afterwards. Its exponentials run on the multi-function unit (unit_exp), and it asks
// for two blocks of 512 threads per SM (at most 64 registers a thread, no spills): on the H200
// the general instantiation below, at one 512-thread block per SM, ran at 25% of copy
// bandwidth at 8192 x 32000 bf16, each SM loading, then computing, then storing one row at a
// time. Two resident rows let one block's loads overlap the other's arithmetic.
constexpr int kResidentVecs = 8;

// exp for the hard-target resident path. float: ex2.approx.ftz of x * log2(e), one FMUL and
// one MUFU.EX2 (about 2 ulp, plus the rounding of x * log2(e): under 1e-6 relative for the
// |x - max| < 20 that carry the sum). torch's accurate expf takes about four times the
// instructions, and at two exponentials per logit they bound the kernel; without .ftz, ptxas
// wraps every MUFU.EX2 in three instructions that keep results below 2^-126 subnormal, values
// that no loss or gradient here can show. -inf gives 0 and NaN stays NaN, as exp. double
// (float64 logits) keeps the accurate exp.
template <typename acc_t>
__device__ __forceinline__ acc_t unit_exp(acc_t x) {
  if constexpr (std::is_same_v<acc_t, float>) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.4426950408889634f));
    return y;
  } else {
    return ::exp(x);
  }
}

// max(m, the vector's elements), skipping NaN as MaxOp does. 16-bit types take the
// max of pairs in their own format first (HMNMX2, which also returns the non-NaN input): half
// the instructions, and no widened float copy of the row for ptxas to keep alive into the sum
// loop (with one, the bf16 hard-target kernel spilled at 64 registers on sm_90).
template <typename scalar_t, int N>
__device__ __forceinline__ at::opmath_type<scalar_t> vector_max(const AlignedVector<scalar_t, N>& v,
                                                                 at::opmath_type<scalar_t> m) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (kIsReducedFloat<scalar_t>) {
    using pair_t = typename CudaReducedFloat<scalar_t>::pair;
    const pair_t* pairs = reinterpret_cast<const pair_t*>(v.val);
    pair_t r = pairs[0];
#pragma unroll
    for (int i = 1; i < N / 2; ++i) r = __hmax2(r, pairs[i]);
    return MaxOp{}(MaxOp{}(m, __low2float(r)), __high2float(r));
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) m = MaxOp{}(m, static_cast<acc_t>(v.val[e]));
    return m;
  }
}

// Float64 keeps one block per SM: its accurate exp needs more than 64 registers a thread.
template <typename scalar_t, int ROW_THREADS, bool HARD_TARGETS>
constexpr int resident_min_blocks() {
  return HARD_TARGETS && !std::is_same_v<scalar_t, double> ? 1024 / ROW_THREADS : 1;
}

template <typename scalar_t, int ROW_THREADS, bool HARD_TARGETS>
__global__ void __launch_bounds__(ROW_THREADS, (resident_min_blocks<scalar_t, ROW_THREADS, HARD_TARGETS>()))
    cross_entropy_resident_row_kernel(CrossEntropyArgs<scalar_t, at::opmath_type<scalar_t>> p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  using Vec = AlignedVector<scalar_t, kVec>;
  __shared__ MaxSum<acc_t> smem_ms[ROW_THREADS / kWarp];
  __shared__ acc_t smem_sum[ROW_THREADS / kWarp];
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  const int64_t row = blockIdx.x;
  const scalar_t* x_row = p.logits + row * p.C;
  const scalar_t* q_row = p.prob != nullptr ? p.prob + row * p.C : nullptr;
  // Column indices within the row fit 32 bits (at most kResidentMaxThreads * kResidentVecs
  // vectors): 64-bit ones cost the hard-target path registers it does not have.
  const int vecs = static_cast<int>(p.C / kVec);
  // Vector v of this thread holds columns [(v * ROW_THREADS + threadIdx.x) * kVec, + kVec):
  // consecutive threads read consecutive 16 bytes.
  Vec xv[kResidentVecs];
#pragma unroll
  for (int v = 0; v < kResidentVecs; ++v) {
    const int i = v * ROW_THREADS + static_cast<int>(threadIdx.x);
    if (i < vecs) xv[v] = reinterpret_cast<const Vec*>(x_row)[i];
  }

  // Pass 1 on registers: this thread's max, then its sum of exp(x - max) (-inf adds 0, NaN
  // makes the sum NaN, as the online update above, and the max adds exactly 1), merged across
  // the block like the online partials.
  const RowConstants<acc_t> k = row_constants(p);
  acc_t m = neg_inf, s = 0, coef = 0;
#pragma unroll
  for (int v = 0; v < kResidentVecs; ++v) {
    if (v * ROW_THREADS + static_cast<int>(threadIdx.x) < vecs) m = vector_max(xv[v], m);
  }
  // The hard-target path takes the row's max before any exponential, so the block reduces a
  // max and then a plain sum, where merging (max, sum) partials costs two exponentials per
  // step, for every thread at the shared-memory step (about a quarter of the kernel's
  // instructions at 512 threads). A row of only -inf sums relative to 0, so its -inf columns
  // add exp(-inf) = 0, not exp(-inf - -inf) = NaN.
  if constexpr (HARD_TARGETS) m = reduce_row<ROW_THREADS>(m, smem_sum, MaxOp{});
  const acc_t base = m == neg_inf ? acc_t(0) : m;
#pragma unroll
  for (int v = 0; v < kResidentVecs; ++v) {
    const int i = v * ROW_THREADS + static_cast<int>(threadIdx.x);
    if (i < vecs) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const acc_t x = static_cast<acc_t>(xv[v].val[e]);
        if constexpr (HARD_TARGETS) {
          s += unit_exp(x - base);
        } else {
          if (x != neg_inf) s += x == m ? acc_t(1) : ::exp(x - m);
          coef += pass1_coefficient(p, k, q_row, static_cast<int64_t>(i) * kVec + e);
        }
      }
    }
  }
  RowStats<acc_t> st;
  if constexpr (HARD_TARGETS) {
    st = {m, reduce_sum<ROW_THREADS>(s, smem_sum), acc_t(0)};
  } else {
    const MaxSum<acc_t> ms = reduce_max_sum<ROW_THREADS>(MaxSum<acc_t>{m, s}, smem_ms);
    st = {ms.m, ms.s, reduce_sum<ROW_THREADS>(coef, smem_sum)};
  }

  const RowTarget<acc_t> tg = row_target(p, row);
  const acc_t x_t = tg.valid && q_row == nullptr ? static_cast<acc_t>(x_row[tg.t]) : acc_t(0);
  acc_t A, c1;
  row_coefficients(st, tg, k, q_row != nullptr, A, c1);
  // Every thread has read x_t before any gradient store may overwrite it (in-place mode).
  __syncthreads();

  // Pass 2 on registers: the gradient, one vector store per vector, and sum_j a_j (x_j - m).
  scalar_t* g_row = p.grad != nullptr ? p.grad + row * p.C : nullptr;
  const bool need_dot = !HARD_TARGETS && (q_row != nullptr || k.smooth);
  acc_t dot = 0;
  if (g_row != nullptr || need_dot) {
#pragma unroll
    for (int v = 0; v < kResidentVecs; ++v) {
      const int i = v * ROW_THREADS + static_cast<int>(threadIdx.x);
      if (i < vecs) {
        Vec gv;
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const acc_t x = static_cast<acc_t>(xv[v].val[e]);
          if constexpr (HARD_TARGETS) {
            gv.val[e] = static_cast<scalar_t>(unit_exp(x - st.m) * c1);
          } else {
            const acc_t a = column_coefficient(p, k, tg, q_row, static_cast<int64_t>(i) * kVec + e, x, st.m, dot);
            if (g_row != nullptr) gv.val[e] = static_cast<scalar_t>(gradient_element(k, tg, x, st.m, c1, a));
          }
        }
        if (g_row != nullptr) reinterpret_cast<Vec*>(g_row)[i] = gv;
      }
    }
    // Hard targets: the target's column, exp(x_t - m) c1 - a_t scale, by the thread whose
    // vector store wrote it (program order puts this store after that one).
    if (HARD_TARGETS && tg.valid && threadIdx.x == (tg.t / kVec) % ROW_THREADS) {
      g_row[tg.t] = static_cast<scalar_t>(unit_exp(x_t - st.m) * c1 - k.keep * tg.w_t * k.scale);
    }
  }
  if (need_dot) dot = reduce_sum<ROW_THREADS>(dot, smem_sum);
  if (threadIdx.x == 0) p.loss[row] = row_loss(st, tg, k, q_row != nullptr, A, dot, x_t);
}

// Threads per block for the register-resident kernel (256 or 512: just enough for
// kResidentVecs vectors each; at 128 threads ptxas spilled), or 0 when the row does
// not qualify: narrow rows (a warp per row does better), rows too wide for the registers,
// widths that are not a multiple of the vector, misaligned rows.
constexpr int64_t kResidentMaxThreads = 512;

template <typename scalar_t>
int resident_row_threads(const CrossEntropyArgs<scalar_t, at::opmath_type<scalar_t>>& args) {
  constexpr int64_t kVec = 16 / sizeof(scalar_t);
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  if (args.C <= kWarpRowMaxC || args.C % kVec != 0 || !aligned(args.logits)) return 0;
  if (args.grad != nullptr && !aligned(args.grad)) return 0;
  const int64_t needed = ceil_div(args.C / kVec, kResidentVecs);
  if (needed > kResidentMaxThreads) return 0;
  return needed <= 256 ? 256 : 512;
}

template <typename scalar_t, int ROW_THREADS>
void launch_resident_rows(const CrossEntropyArgs<scalar_t, at::opmath_type<scalar_t>>& args, cudaStream_t stream) {
  const auto grid = static_cast<unsigned>(args.N);
  if (args.prob == nullptr && args.smoothing == 0) {
    cross_entropy_resident_row_kernel<scalar_t, ROW_THREADS, true><<<grid, ROW_THREADS, 0, stream>>>(args);
  } else {
    cross_entropy_resident_row_kernel<scalar_t, ROW_THREADS, false><<<grid, ROW_THREADS, 0, stream>>>(args);
  }
}

// Few, very wide rows: each row split into column ranges of split_c, one block per (range,
// row) in three launches whose per-row partials are combined in a fixed order
// (deterministic). Workspaces in acc_t: stats [N, S, 3], dots [N, S], x_t [N].
struct SplitWorkspace {
  void* stats;
  void* dots;
  void* x_t;
  int64_t split_c, splits;
};

template <typename acc_t>
__device__ __forceinline__ RowStats<acc_t> combine_row_stats(const acc_t* stats_row, int64_t splits) {
  MaxSum<acc_t> ms{stats_row[0], stats_row[1]};
  acc_t coef = stats_row[2];
  for (int64_t k = 1; k < splits; ++k) {
    ms = combine(ms, MaxSum<acc_t>{stats_row[3 * k], stats_row[3 * k + 1]});
    coef += stats_row[3 * k + 2];
  }
  return {ms.m, ms.s, coef};
}

template <typename scalar_t>
__global__ void cross_entropy_split_stats_kernel(CrossEntropyArgs<scalar_t, at::opmath_type<scalar_t>> p,
                                                 SplitWorkspace ws) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ MaxSum<acc_t> smem_ms[kBlockRowThreads / kWarp];
  __shared__ acc_t smem_sum[kBlockRowThreads / kWarp];
  const int64_t row = blockIdx.y, split = blockIdx.x;
  const int64_t begin = split * ws.split_c, end = std::min(begin + ws.split_c, p.C);
  const scalar_t* x_row = p.logits + row * p.C;
  const scalar_t* q_row = p.prob != nullptr ? p.prob + row * p.C : nullptr;
  const RowStats<acc_t> st =
      row_stats<kBlockRowThreads>(p, row_constants(p), x_row, q_row, begin, end, smem_ms, smem_sum);
  if (threadIdx.x != 0) return;
  acc_t* out = static_cast<acc_t*>(ws.stats) + (row * ws.splits + split) * 3;
  out[0] = st.m;
  out[1] = st.s;
  out[2] = st.coef;
  if (q_row == nullptr) {
    // x_t is read here, before the gradient launch may overwrite the row (in-place mode).
    const RowTarget<acc_t> tg = row_target(p, row);
    if (tg.valid && tg.t >= begin && tg.t < end) static_cast<acc_t*>(ws.x_t)[row] = static_cast<acc_t>(x_row[tg.t]);
  }
}

template <typename scalar_t>
__global__ void cross_entropy_split_grad_kernel(CrossEntropyArgs<scalar_t, at::opmath_type<scalar_t>> p,
                                                SplitWorkspace ws) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem_sum[kBlockRowThreads / kWarp];
  const int64_t row = blockIdx.y, split = blockIdx.x;
  const int64_t begin = split * ws.split_c, end = std::min(begin + ws.split_c, p.C);
  const scalar_t* x_row = p.logits + row * p.C;
  const scalar_t* q_row = p.prob != nullptr ? p.prob + row * p.C : nullptr;
  const RowConstants<acc_t> k = row_constants(p);
  const RowStats<acc_t> st = combine_row_stats(static_cast<const acc_t*>(ws.stats) + row * ws.splits * 3, ws.splits);
  const RowTarget<acc_t> tg = row_target(p, row);
  acc_t A, c1;
  row_coefficients(st, tg, k, q_row != nullptr, A, c1);
  const acc_t dot = row_grad<kBlockRowThreads>(p, k, tg, row, x_row, q_row, begin, end, st.m, c1, smem_sum);
  if (threadIdx.x == 0) static_cast<acc_t*>(ws.dots)[row * ws.splits + split] = dot;
}

// One thread per row.
template <typename scalar_t>
__global__ void cross_entropy_split_loss_kernel(CrossEntropyArgs<scalar_t, at::opmath_type<scalar_t>> p,
                                                SplitWorkspace ws) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= p.N) return;
  const RowConstants<acc_t> k = row_constants(p);
  const RowStats<acc_t> st = combine_row_stats(static_cast<const acc_t*>(ws.stats) + row * ws.splits * 3, ws.splits);
  const acc_t* dots = static_cast<const acc_t*>(ws.dots) + row * ws.splits;
  acc_t dot = 0;
  for (int64_t s = 0; s < ws.splits; ++s) dot += dots[s];
  const RowTarget<acc_t> tg = row_target(p, row);
  acc_t A, c1;
  row_coefficients(st, tg, k, p.prob != nullptr, A, c1);
  const acc_t x_t = tg.valid && p.prob == nullptr ? static_cast<const acc_t*>(ws.x_t)[row] : acc_t(0);
  p.loss[row] = row_loss(st, tg, k, p.prob != nullptr, A, dot, x_t);
}

// Rows are split when they are at least kSplitMinC wide and the batch alone would leave SMs
// idle: enough ranges for about four blocks per SM, at most kMaxSplits per row.
constexpr int64_t kSplitMinC = 8192;
constexpr int64_t kMaxSplits = 64;

int64_t split_columns(int64_t N, int64_t C) {
  if (C < kSplitMinC) return 0;
  const int64_t blocks_wanted = 4 * at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  if (N >= blocks_wanted) return 0;
  const int64_t splits = std::min({kMaxSplits, ceil_div(blocks_wanted, N), ceil_div(C, kBlockRowThreads)});
  if (splits <= 1) return 0;
  // Ranges of whole 512-column strides, so every thread reads as many elements.
  return ceil_div(ceil_div(C, splits), kBlockRowThreads) * kBlockRowThreads;
}

template <typename scalar_t>
void launch_cross_entropy(const CrossEntropyArgs<scalar_t, at::opmath_type<scalar_t>>& args,
                          const at::TensorOptions& acc_options) {
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t split_c = split_columns(args.N, args.C);
  if (split_c > 0) {
    const int64_t splits = ceil_div(args.C, split_c);
    const at::Tensor stats = at::empty({args.N, splits, 3}, acc_options);
    const at::Tensor dots = at::empty({args.N, splits}, acc_options);
    const at::Tensor x_t = at::zeros({args.N}, acc_options);
    const SplitWorkspace ws{stats.data_ptr(), dots.data_ptr(), x_t.data_ptr(), split_c, splits};
    const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(args.N));
    cross_entropy_split_stats_kernel<scalar_t><<<grid, kBlockRowThreads, 0, stream>>>(args, ws);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cross_entropy_split_grad_kernel<scalar_t><<<grid, kBlockRowThreads, 0, stream>>>(args, ws);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int threads = 128;
    cross_entropy_split_loss_kernel<scalar_t>
        <<<static_cast<unsigned>(ceil_div(args.N, threads)), threads, 0, stream>>>(args, ws);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const int resident_threads = resident_row_threads(args);
  if (resident_threads == 256) {
    launch_resident_rows<scalar_t, 256>(args, stream);
  } else if (resident_threads == 512) {
    launch_resident_rows<scalar_t, 512>(args, stream);
  } else if (args.C <= kThreadRowMaxC) {
    const dim3 block(1, kThreadRowsPerBlock);
    const int64_t blocks = ceil_div(args.N, kThreadRowsPerBlock);
    cross_entropy_fwd_kernel<scalar_t, 1><<<static_cast<unsigned>(blocks), block, 0, stream>>>(args);
  } else if (args.C <= kWarpRowMaxC) {
    const dim3 block(kWarp, kWarpRowsPerBlock);
    const int64_t blocks = ceil_div(args.N, kWarpRowsPerBlock);
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
    launch_cross_entropy<scalar_t>(args, loss.options());
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

// Every thread reads the scale first: when it is 1 (loss.backward()'s gradient) the grid
// exits without touching the gradient, so the check costs a launch, not a pass over memory.
template <typename scalar_t>
__global__ void scale_grad_unless_one_kernel(scalar_t* grad, const scalar_t* scale_ptr, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(*scale_ptr);
  if (scale == acc_t(1)) return;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    grad[i] = static_cast<scalar_t>(static_cast<acc_t>(grad[i]) * scale);
  }
}

void scale_grad_unless_one_cuda(at::Tensor& grad, const at::Tensor& scale) {
  check_scale_grad_args(grad, scale);
  const int64_t n = grad.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(grad.device());
  constexpr int kThreads = 256;
  // Grid-stride: at most 8 blocks per SM, so a scale of 1 costs that many early exits.
  const int64_t blocks =
      std::min<int64_t>(ceil_div(n, kThreads), 8 * at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "scale_grad_unless_one_cuda", [&] {
    scale_grad_unless_one_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0,
                                              at::cuda::getCurrentCUDAStream()>>>(
        grad.mutable_data_ptr<scalar_t>(), scale.const_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The reduction around the cross-entropy kernel (cross_entropy_mean_denominator and
// cross_entropy_reduce): a sum over the batch in float64, in a fixed order (deterministic,
// no atomics). One block sums up to kSumBlockItems items in one launch (the tutorial's
// batches); longer inputs take two: per-block partial sums, then one block over those. The
// ATen ops this replaces were five launches for "mean", a large part of a small network's GPU
// step, which is launch-bound.
constexpr int kSumThreads = 512;
constexpr int64_t kSumBlockItems = 16 * kSumThreads;
constexpr int64_t kMaxSumBlocks = 1024;

// Sum of load(i) over [begin, end): thread-strided, then a shuffle tree per warp and the warps'
// sums in order. The result is valid in thread 0.
template <typename Load>
__device__ double block_sum(const Load& load, int64_t begin, int64_t end) {
  __shared__ double warp_sums[kSumThreads / kWarp];
  double sum = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kSumThreads) sum += load(i);
  for (int offset = kWarp / 2; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % kWarp == 0) warp_sums[threadIdx.x / kWarp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    sum = 0;
    for (int w = 0; w < kSumThreads / kWarp; ++w) sum += warp_sums[w];
  }
  return sum;
}

// Block b sums items [b * per_block, (b + 1) * per_block) of n. A single block hands its sum to
// `finish`; otherwise it becomes partials[b], for a second, single-block launch over them.
template <typename Load, typename Finish>
__global__ void __launch_bounds__(kSumThreads) batch_sum_kernel(Load load, int64_t n, int64_t per_block,
                                                                double* partials, Finish finish) {
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * per_block;
  const double sum = block_sum(load, begin, std::min(n, begin + per_block));
  if (threadIdx.x != 0) return;
  if (gridDim.x == 1) {
    finish(sum);
  } else {
    partials[blockIdx.x] = sum;
  }
}

struct PartialSumLoad {
  const double* partials;
  __device__ double operator()(int64_t i) const { return partials[i]; }
};

template <typename Load, typename Finish>
void launch_batch_sum(const Load& load, int64_t n, const Finish& finish, const at::TensorOptions& options) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t blocks = std::clamp<int64_t>(ceil_div(n, kSumBlockItems), 1, kMaxSumBlocks);
  if (blocks == 1) {
    batch_sum_kernel<<<1, kSumThreads, 0, stream>>>(load, n, n, nullptr, finish);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const at::Tensor partials = at::empty({blocks}, options.dtype(at::kDouble));
  double* partials_ptr = partials.mutable_data_ptr<double>();
  batch_sum_kernel<<<static_cast<unsigned>(blocks), kSumThreads, 0, stream>>>(load, n, ceil_div(n, blocks),
                                                                              partials_ptr, finish);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  batch_sum_kernel<<<1, kSumThreads, 0, stream>>>(PartialSumLoad{partials_ptr}, blocks, blocks, nullptr, finish);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The weight of each class-index target that is not ignored (1 without a weight; out-of-range
// targets weigh nothing, as on CPU: the cross-entropy kernel asserts on them).
template <typename weight_t>
struct TargetWeightLoad {
  const int64_t* target;
  const weight_t* weight;
  int64_t num_weights;
  int64_t ignore_index;
  __device__ double operator()(int64_t i) const {
    const int64_t t = target[i];
    if (t == ignore_index) return 0.0;
    if (weight == nullptr) return 1.0;
    return t >= 0 && t < num_weights ? static_cast<double>(weight[t]) : 0.0;
  }
};

// denominator = sum + offset (offset: the row count of probability targets, summed over no
// items) and its reciprocal, both in acc_t.
template <typename acc_t>
struct DenominatorFinish {
  acc_t* denominator;
  acc_t* reciprocal;
  double offset;
  __device__ void operator()(double sum) const {
    const acc_t d = static_cast<acc_t>(sum + offset);
    *denominator = d;
    *reciprocal = acc_t(1) / d;
  }
};

std::tuple<at::Tensor, at::Tensor> cross_entropy_mean_denominator_cuda(const at::Tensor& target,
                                                                       const std::optional<at::Tensor>& weight,
                                                                       int64_t ignore_index, at::ScalarType dtype) {
  check_mean_denominator_args(target, weight, dtype);
  TORCH_CHECK(target.is_cuda(), "cross_entropy_mean_denominator_cuda: expected CUDA tensors, got ", target.device());
  const c10::cuda::CUDAGuard guard(target.device());
  const auto options = target.options().dtype(dtype);
  at::Tensor denominator = at::empty({1}, options);
  at::Tensor reciprocal = at::empty({1}, options);
  const bool probabilities = target.dim() == 2;
  const at::Tensor target_c = probabilities ? target : target.contiguous();
  const at::Tensor weight_c = weight.has_value() && !probabilities ? weight->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(dtype, "cross_entropy_mean_denominator_cuda", [&] {
    using acc_t = scalar_t;
    const double offset = probabilities && target.size(1) > 0 ? static_cast<double>(target.size(0)) : 0.0;
    const DenominatorFinish<acc_t> finish{denominator.mutable_data_ptr<acc_t>(), reciprocal.mutable_data_ptr<acc_t>(),
                                          offset};
    const int64_t n = probabilities ? 0 : target_c.numel();
    const int64_t* t = probabilities ? nullptr : target_c.const_data_ptr<int64_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight_c.defined() ? weight_c.scalar_type() : dtype,
                                    "cross_entropy_mean_denominator_cuda_weight", [&] {
      const scalar_t* w = weight_c.defined() ? weight_c.const_data_ptr<scalar_t>() : nullptr;
      const TargetWeightLoad<scalar_t> load{t, w, weight_c.defined() ? weight_c.numel() : 0, ignore_index};
      launch_batch_sum(load, n, finish, options);
    });
  });
  return {denominator, reciprocal};
}

template <typename acc_t>
struct LossRowLoad {
  const acc_t* rows;
  __device__ double operator()(int64_t i) const { return static_cast<double>(rows[i]); }
};

// sum, rounded to the losses' dtype, divided by the denominator if any, in the output dtype:
// loss_rows.sum() / denominator, then .to(dtype).
template <typename acc_t, typename out_t>
struct ReduceFinish {
  const acc_t* denominator;
  out_t* out;
  __device__ void operator()(double sum) const {
    acc_t value = static_cast<acc_t>(sum);
    if (denominator != nullptr) value = value / *denominator;
    *out = static_cast<out_t>(value);
  }
};

at::Tensor cross_entropy_reduce_cuda(const at::Tensor& loss_rows, const std::optional<at::Tensor>& denominator,
                                     at::ScalarType dtype) {
  check_reduce_args(loss_rows, denominator, dtype);
  TORCH_CHECK(loss_rows.is_cuda(), "cross_entropy_reduce_cuda: expected CUDA tensors, got ", loss_rows.device());
  const c10::cuda::CUDAGuard guard(loss_rows.device());
  at::Tensor out = at::empty({}, loss_rows.options().dtype(dtype));
  const at::Tensor rows = loss_rows.contiguous();
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "cross_entropy_reduce_cuda", [&] {
    using acc_t = scalar_t;
    const acc_t* d = denominator.has_value() ? denominator->const_data_ptr<acc_t>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cross_entropy_reduce_cuda_out", [&] {
      const ReduceFinish<acc_t, scalar_t> finish{d, out.mutable_data_ptr<scalar_t>()};
      launch_batch_sum(LossRowLoad<acc_t>{rows.const_data_ptr<acc_t>()}, rows.numel(), finish, rows.options());
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedmlp, CUDA, m) {
  m.impl("cross_entropy_fwd", &cross_entropy_fwd_cuda);
  m.impl("cross_entropy_fwd_inplace", &cross_entropy_fwd_inplace_cuda);
  m.impl("scale_grad_unless_one_", &scale_grad_unless_one_cuda);
  m.impl("cross_entropy_mean_denominator", &cross_entropy_mean_denominator_cuda);
  m.impl("cross_entropy_reduce", &cross_entropy_reduce_cuda);
}

}  // namespace fusedmlp
