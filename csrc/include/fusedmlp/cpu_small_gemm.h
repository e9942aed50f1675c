#pragma once
// A GEMM for the narrow layers of small MLPs on CPU (fp32/fp64, widths up to
// kSmallGemmMaxWidth). At 32 x 50 x 30 the work is ~50k FMAs, about 2 us, while a call into
// the BLAS through ATen costs 5-10 us of checks, packing and dispatch: for a tiny network the
// GEMM "overhead" is most of a training step. This kernel has none: no packing, no
// allocation, the operand layouts the MLP passes need taken as they are.
//
// Shape of the loop: C[m, :] = init + sum_k A[m, k] * B[k, :], one output row at a time, the
// row kept in a stack accumulator (width <= kSmallGemmMaxWidth) and the inner loop over the
// contiguous row of B, which the compiler vectorizes (AVX2 + FMA when the CPU has them,
// picked at run time). A is read through two strides, so A may be a transposed view.
#include <ATen/Parallel.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>

namespace fusedmlp::cpu {

constexpr int64_t kSmallGemmMaxWidth = 128;
// Output rows per parallel task: one task up to ~64k FMAs, so tiny layers stay on the calling
// thread (a thread-pool handoff costs more than the whole GEMM).
constexpr int64_t kSmallGemmTaskFmas = 65536;

struct SmallGemmArgs {
  int64_t M, N, K;
  int64_t a_row, a_col;  // A[m, k] = a[m * a_row + k * a_col]
};

template <typename T>
C10_ALWAYS_INLINE void small_gemm_rows(const SmallGemmArgs& s, const T* a, const T* b, const T* init, T* c,
                                       int64_t begin, int64_t end) {
  T acc[kSmallGemmMaxWidth];
  const int64_t N = s.N;
  for (int64_t m = begin; m < end; ++m) {
    for (int64_t n = 0; n < N; ++n) acc[n] = init != nullptr ? init[n] : T(0);
    const T* a_m = a + m * s.a_row;
    for (int64_t k = 0; k < s.K; ++k) {
      const T a_mk = a_m[k * s.a_col];
      const T* b_k = b + k * N;
#pragma GCC ivdep
      for (int64_t n = 0; n < N; ++n) acc[n] += a_mk * b_k[n];
    }
    T* c_m = c + m * N;
    for (int64_t n = 0; n < N; ++n) c_m[n] = acc[n];
  }
}

template <typename T>
__attribute__((target("avx2,fma"))) void small_gemm_rows_avx2(const SmallGemmArgs& s, const T* a, const T* b,
                                                               const T* init, T* c, int64_t begin, int64_t end) {
  small_gemm_rows<T>(s, a, b, init, c, begin, end);
}

template <typename T>
void small_gemm_rows_default(const SmallGemmArgs& s, const T* a, const T* b, const T* init, T* c, int64_t begin,
                             int64_t end) {
  small_gemm_rows<T>(s, a, b, init, c, begin, end);
}

inline bool small_gemm_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

// C[M, N] (row-major, contiguous) = A[M, K] @ B[K, N] (B row-major, contiguous), plus init[N]
// on every row when init is not null. N <= kSmallGemmMaxWidth. Each output row is summed over
// k in order on one thread: the result does not depend on the thread count.
template <typename T>
void small_gemm(const SmallGemmArgs& s, const T* a, const T* b, const T* init, T* c) {
  const int64_t grain = std::max<int64_t>(1, kSmallGemmTaskFmas / std::max<int64_t>(s.N * s.K, 1));
  const bool avx2 = small_gemm_has_avx2_fma();
  at::parallel_for(0, s.M, grain, [&](int64_t begin, int64_t end) {
    if (avx2) {
      small_gemm_rows_avx2<T>(s, a, b, init, c, begin, end);
    } else {
      small_gemm_rows_default<T>(s, a, b, init, c, begin, end);
    }
  });
}

}  // namespace fusedmlp::cpu
