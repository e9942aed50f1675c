#pragma once
// A GEMM for the narrow layers of small MLPs on CPU (fp32/fp64, widths up to
// kSmallGemmMaxWidth). At 32 x 50 x 30 the work is ~50k FMAs, about 2 us, while a call into
// the BLAS through ATen costs 5-10 us of checks, packing and dispatch: for a tiny network the
// GEMM "overhead" is most of a training step. This kernel has none: no packing, no
// allocation, the operand layouts the MLP passes need taken as they are.
//
// C[M, N] = init + A[M, K] @ B[K, N], with B row-major and contiguous (N <= 128 columns, so
// a few KB) and A read through two strides (so A may be a transposed view). On AVX2+FMA CPUs
// (picked at run time; the extension is built for the baseline ISA) a register-blocked
// micro-kernel computes a kRows x (kPanelVectors x lanes) block of C per step: the block's
// accumulators stay in registers for the whole k loop, each B vector loaded once serves
// kRows rows and each broadcast of A serves the panel, so the loop is bound by FMAs rather
// than by loads and stores of C (the first version of this kernel kept a row of C in memory
// and ran at a quarter of the BLAS's speed from 128 rows up). Partial panels (widths that are
// not a multiple of the vector) use masked loads and stores, which never touch memory past
// the row.
#include <ATen/Parallel.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>

#include <fusedmlp/cpu_isa.h>

#ifdef FUSEDMLP_X86
#include <immintrin.h>
#endif

namespace fusedmlp::cpu {

constexpr int64_t kSmallGemmMaxWidth = 128;
// Output rows per parallel task: one task up to ~64k FMAs, so tiny layers stay on the calling
// thread (a thread-pool handoff costs more than the whole GEMM).
constexpr int64_t kSmallGemmTaskFmas = 65536;

struct SmallGemmArgs {
  int64_t M, N, K;
  int64_t a_row, a_col;  // A[m, k] = a[m * a_row + k * a_col]
};

// Portable version: one output row at a time, summed over k in order.
template <typename T>
void small_gemm_rows_portable(const SmallGemmArgs& s, const T* a, const T* b, const T* init, T* c, int64_t begin,
                              int64_t end) {
  T acc[kSmallGemmMaxWidth];
  const int64_t N = s.N;
  for (int64_t m = begin; m < end; ++m) {
    for (int64_t n = 0; n < N; ++n) acc[n] = init != nullptr ? init[n] : T(0);
    const T* a_m = a + m * s.a_row;
    for (int64_t k = 0; k < s.K; ++k) {
      const T a_mk = a_m[k * s.a_col];
      const T* b_k = b + k * N;
      for (int64_t n = 0; n < N; ++n) acc[n] += a_mk * b_k[n];
    }
    T* c_m = c + m * N;
    for (int64_t n = 0; n < N; ++n) c_m[n] = acc[n];
  }
}

#ifdef FUSEDMLP_X86

// 256-bit vectors of T, the few operations the micro-kernel needs. Loads and stores take a
// lane mask (the first `valid` lanes) for partial panels.
template <typename T>
struct Avx2Vec;

template <>
struct Avx2Vec<float> {
  using V = __m256;
  static constexpr int kLanes = 8;
  FUSEDMLP_AVX2_FMA static __m256i mask(int valid) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  FUSEDMLP_AVX2_FMA static V zero() { return _mm256_setzero_ps(); }
  FUSEDMLP_AVX2_FMA static V broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  FUSEDMLP_AVX2_FMA static V load(const float* p) { return _mm256_loadu_ps(p); }
  FUSEDMLP_AVX2_FMA static V load(const float* p, __m256i m) { return _mm256_maskload_ps(p, m); }
  FUSEDMLP_AVX2_FMA static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  FUSEDMLP_AVX2_FMA static void store(float* p, V v, __m256i m) { _mm256_maskstore_ps(p, m, v); }
  FUSEDMLP_AVX2_FMA static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
};

template <>
struct Avx2Vec<double> {
  using V = __m256d;
  static constexpr int kLanes = 4;
  FUSEDMLP_AVX2_FMA static __m256i mask(int valid) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(valid), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  FUSEDMLP_AVX2_FMA static V zero() { return _mm256_setzero_pd(); }
  FUSEDMLP_AVX2_FMA static V broadcast(const double* p) { return _mm256_broadcast_sd(p); }
  FUSEDMLP_AVX2_FMA static V load(const double* p) { return _mm256_loadu_pd(p); }
  FUSEDMLP_AVX2_FMA static V load(const double* p, __m256i m) { return _mm256_maskload_pd(p, m); }
  FUSEDMLP_AVX2_FMA static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  FUSEDMLP_AVX2_FMA static void store(double* p, V v, __m256i m) { _mm256_maskstore_pd(p, m, v); }
  FUSEDMLP_AVX2_FMA static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
};

// Rows x panel block: 4 rows x 2 vectors is 8 accumulators + 2 B vectors + 1 broadcast of
// the 16 ymm registers, leaving the compiler room for addresses.
constexpr int kBlockRows = 4;
constexpr int kPanelVectors = 2;

// A panel vector: whole, or its first lanes under `mask` (the mask is unused when FULL).
template <typename T, bool FULL>
FUSEDMLP_AVX2_FMA C10_ALWAYS_INLINE typename Avx2Vec<T>::V panel_load(const T* p, __m256i mask) {
  if constexpr (FULL) {
    return Avx2Vec<T>::load(p);
  } else {
    return Avx2Vec<T>::load(p, mask);
  }
}

template <typename T, bool FULL>
FUSEDMLP_AVX2_FMA C10_ALWAYS_INLINE void panel_store(T* p, typename Avx2Vec<T>::V v, __m256i mask) {
  if constexpr (FULL) {
    Avx2Vec<T>::store(p, v);
  } else {
    Avx2Vec<T>::store(p, v, mask);
  }
}

// C[m0 : m0 + ROWS, n0 : n0 + panel] for one panel; FULL: the panel's vectors are all whole.
template <typename T, int ROWS, bool FULL>
FUSEDMLP_AVX2_FMA C10_ALWAYS_INLINE void small_gemm_block(const SmallGemmArgs& s, const T* a, const T* b,
                                                           const T* init, T* c, int64_t m0, int64_t n0) {
  using Vec = Avx2Vec<T>;
  using V = typename Vec::V;
  constexpr int L = Vec::kLanes;
  __m256i masks[kPanelVectors] = {};
  if constexpr (!FULL) {
    for (int j = 0; j < kPanelVectors; ++j) {
      masks[j] = Vec::mask(static_cast<int>(std::clamp<int64_t>(s.N - n0 - j * L, 0, L)));
    }
  }
  V acc[ROWS][kPanelVectors];
  for (int j = 0; j < kPanelVectors; ++j) {
    const V start = init != nullptr ? panel_load<T, FULL>(init + n0 + j * L, masks[j]) : Vec::zero();
    for (int i = 0; i < ROWS; ++i) acc[i][j] = start;
  }
  const T* a_block = a + m0 * s.a_row;
  const T* b_panel = b + n0;
  for (int64_t k = 0; k < s.K; ++k) {
    V b_k[kPanelVectors];
    for (int j = 0; j < kPanelVectors; ++j) b_k[j] = panel_load<T, FULL>(b_panel + k * s.N + j * L, masks[j]);
    const T* a_k = a_block + k * s.a_col;
    for (int i = 0; i < ROWS; ++i) {
      const V a_ik = Vec::broadcast(a_k + i * s.a_row);
      for (int j = 0; j < kPanelVectors; ++j) acc[i][j] = Vec::fma(a_ik, b_k[j], acc[i][j]);
    }
  }
  for (int i = 0; i < ROWS; ++i) {
    T* c_row = c + (m0 + i) * s.N + n0;
    for (int j = 0; j < kPanelVectors; ++j) panel_store<T, FULL>(c_row + j * L, acc[i][j], masks[j]);
  }
}

template <typename T, int ROWS>
FUSEDMLP_AVX2_FMA void small_gemm_row_block(const SmallGemmArgs& s, const T* a, const T* b, const T* init, T* c,
                                            int64_t m0) {
  constexpr int64_t kPanel = kPanelVectors * Avx2Vec<T>::kLanes;
  int64_t n0 = 0;
  for (; n0 + kPanel <= s.N; n0 += kPanel) small_gemm_block<T, ROWS, true>(s, a, b, init, c, m0, n0);
  if (n0 < s.N) small_gemm_block<T, ROWS, false>(s, a, b, init, c, m0, n0);
}

template <typename T>
FUSEDMLP_AVX2_FMA void small_gemm_rows_avx2(const SmallGemmArgs& s, const T* a, const T* b, const T* init, T* c,
                                            int64_t begin, int64_t end) {
  int64_t m = begin;
  for (; m + kBlockRows <= end; m += kBlockRows) small_gemm_row_block<T, kBlockRows>(s, a, b, init, c, m);
  switch (end - m) {
    case 3:
      return small_gemm_row_block<T, 3>(s, a, b, init, c, m);
    case 2:
      return small_gemm_row_block<T, 2>(s, a, b, init, c, m);
    case 1:
      return small_gemm_row_block<T, 1>(s, a, b, init, c, m);
    default:
      return;
  }
}
#endif  // FUSEDMLP_X86

// C[M, N] (row-major, contiguous) = A[M, K] @ B[K, N] (B row-major, contiguous), plus init[N]
// on every row when init is not null. N <= kSmallGemmMaxWidth. Each output element is summed
// over k in order by one thread, the same arithmetic whatever the blocking: the result does
// not depend on the thread count.
template <typename T>
void small_gemm(const SmallGemmArgs& s, const T* a, const T* b, const T* init, T* c) {
  const int64_t grain = std::max<int64_t>(1, kSmallGemmTaskFmas / std::max<int64_t>(s.N * s.K, 1));
#ifdef FUSEDMLP_X86
  if (has_avx2_fma()) {
    // Tasks are whole row blocks, so only the last block of C can be short.
    const int64_t blocks = (s.M + kBlockRows - 1) / kBlockRows;
    const int64_t block_grain = std::max<int64_t>(1, grain / kBlockRows);
    at::parallel_for(0, blocks, block_grain, [&](int64_t begin, int64_t end) {
      small_gemm_rows_avx2<T>(s, a, b, init, c, begin * kBlockRows, std::min(s.M, end * kBlockRows));
    });
    return;
  }
#endif
  at::parallel_for(0, s.M, grain,
                   [&](int64_t begin, int64_t end) { small_gemm_rows_portable<T>(s, a, b, init, c, begin, end); });
}

}  // namespace fusedmlp::cpu
