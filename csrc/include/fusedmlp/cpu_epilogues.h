#pragma once
// The passes around the GEMMs that the CPU Linear+ReLU and whole-MLP kernels share: bias and
// ReLU over a GEMM output (forward), and the ReLU mask with the bias-gradient reduction
// (backward), each one pass over contiguous [M, N] data, vectorized and parallel.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <fusedmlp/cpu_isa.h>

namespace fusedmlp::cpu {

// Rows per parallel task: enough work per task to amortize the thread-pool handoff.
constexpr int64_t kGrainElements = 32768;
// Columns a backward task owns. Each task walks every row for its columns, so the bias
// gradient is summed in a fixed order (deterministic for any thread count).
constexpr int64_t kBiasGradColumns = 256;

// The loops are plain C++ that the compiler vectorizes. ATen's Vectorized<T> is no help here:
// in an extension built for the baseline ISA it is the generic fallback, which measured ~50x
// slower than torch.relu (a ReLU pass over 256 x 1024 floats: 1.7 ms against 0.03 ms, which
// made the medium MLP's forward 16% slower than eager's). Each pass is compiled for AVX2+FMA
// too and picked at run time (cpu_isa.h); both builds do the same arithmetic in the same
// order, so results do not depend on the CPU.

template <typename scalar_t>
C10_ALWAYS_INLINE void add_bias_relu_rows(scalar_t* out, const scalar_t* bias, int64_t N, bool relu, int64_t begin,
                                          int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t m = begin; m < end; ++m) {
    scalar_t* row = out + m * N;
    if constexpr (std::is_same_v<scalar_t, opmath_t>) {
      if (bias != nullptr) {
        for (int64_t n = 0; n < N; ++n) row[n] += bias[n];
      }
      if (relu) {
        // v < 0 ? 0 : v keeps NaN, as torch.relu does.
        for (int64_t n = 0; n < N; ++n) row[n] = row[n] < scalar_t(0) ? scalar_t(0) : row[n];
      }
    } else {
      // Half/bfloat16: add in fp32 so the bias add rounds once.
      for (int64_t n = 0; n < N; ++n) {
        opmath_t v = static_cast<opmath_t>(row[n]);
        if (bias != nullptr) v += static_cast<opmath_t>(bias[n]);
        if (relu && v < opmath_t(0)) v = opmath_t(0);
        row[n] = static_cast<scalar_t>(v);
      }
    }
  }
}

#ifdef FUSEDMLP_X86
template <typename scalar_t>
FUSEDMLP_AVX2_FMA void add_bias_relu_rows_avx2(scalar_t* out, const scalar_t* bias, int64_t N, bool relu,
                                               int64_t begin, int64_t end) {
  add_bias_relu_rows(out, bias, N, relu, begin, end);
}
#endif

// out[m, :] = act(out[m, :] + bias), in place; bias may be null.
template <typename scalar_t>
void add_bias_relu(scalar_t* out, const scalar_t* bias, int64_t M, int64_t N, bool relu) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(N, 1));
  at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
#ifdef FUSEDMLP_X86
    if (has_avx2_fma()) return add_bias_relu_rows_avx2(out, bias, N, relu, begin, end);
#endif
    add_bias_relu_rows(out, bias, N, relu, begin, end);
  });
}

// Columns [block, block + width) of relu_mask_bias_grad, every row in order.
template <typename scalar_t>
C10_ALWAYS_INLINE void relu_mask_bias_grad_block(const scalar_t* grad, const scalar_t* activation, int64_t M,
                                                 int64_t N, scalar_t* grad_pre, scalar_t* grad_bias, int64_t block,
                                                 int64_t width) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t acc[kBiasGradColumns] = {};
  for (int64_t m = 0; m < M; ++m) {
    const scalar_t* g_row = grad + m * N + block;
    const scalar_t* a_row = activation != nullptr ? activation + m * N + block : nullptr;
    scalar_t* out_row = grad_pre != nullptr ? grad_pre + m * N + block : nullptr;
    for (int64_t j = 0; j < width; ++j) {
      const scalar_t g = (a_row != nullptr && a_row[j] <= scalar_t(0)) ? scalar_t(0) : g_row[j];
      if (out_row != nullptr) out_row[j] = g;
      acc[j] += static_cast<opmath_t>(g);
    }
  }
  if (grad_bias != nullptr) {
    for (int64_t j = 0; j < width; ++j) grad_bias[block + j] = static_cast<scalar_t>(acc[j]);
  }
}

#ifdef FUSEDMLP_X86
template <typename scalar_t>
FUSEDMLP_AVX2_FMA void relu_mask_bias_grad_block_avx2(const scalar_t* grad, const scalar_t* activation, int64_t M,
                                                      int64_t N, scalar_t* grad_pre, scalar_t* grad_bias,
                                                      int64_t block, int64_t width) {
  relu_mask_bias_grad_block(grad, activation, M, N, grad_pre, grad_bias, block, width);
}
#endif

// grad_pre = activation ? grad masked by threshold_backward's rule (activation <= 0 gives 0; a
// NaN activation passes its gradient) : grad, written to grad_pre (may equal grad, may be
// null), and grad_bias = grad_pre.sum(0) (may be null), in one pass over contiguous [M, N].
// Each column is summed in row order: the result does not depend on the thread count.
template <typename scalar_t>
void relu_mask_bias_grad(const scalar_t* grad, const scalar_t* activation, int64_t M, int64_t N, scalar_t* grad_pre,
                         scalar_t* grad_bias) {
  at::parallel_for(0, N, kBiasGradColumns, [&](int64_t begin, int64_t end) {
    // A task may get more than kBiasGradColumns columns (one thread gets them all): walk
    // them in blocks that fit the accumulator.
    for (int64_t block = begin; block < end; block += kBiasGradColumns) {
      const int64_t width = std::min(kBiasGradColumns, end - block);
#ifdef FUSEDMLP_X86
      if (has_avx2_fma()) {
        relu_mask_bias_grad_block_avx2(grad, activation, M, N, grad_pre, grad_bias, block, width);
        continue;
      }
#endif
      relu_mask_bias_grad_block(grad, activation, M, N, grad_pre, grad_bias, block, width);
    }
  });
}

}  // namespace fusedmlp::cpu
