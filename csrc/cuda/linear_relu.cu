// CUDA kernels for linear_relu_fwd / linear_relu_bwd (schemas in csrc/fusedmlp.cpp).
//
// One tiled GEMM, C[M, N] = epilogue(A[M, K] @ B[K, N]), serves all three products:
//   forward   out     = act(X @ W^T + b)   A = X          B = W^T (swapped strides)
//   backward  dX      = grad_pre @ W       A = grad_pre   B = W
//             dW      = grad_pre^T @ X     A = grad_pre^T B = X   (swapped strides)
// Operands are read through their strides, so transposes and non-contiguous inputs
// cost nothing, and in the backward the ReLU mask (output > 0) is applied while the
// A tile is loaded, so grad_pre never exists in memory. The bias gradient is a
// separate column reduction with a fixed summation order, so results are bitwise
// reproducible run to run (no atomics).
//
// Two GEMM bodies share the tile loader and the epilogue:
//   * linear_relu_gemm_kernel: CUDA cores, fp32 / fp64 (and fp16 / bf16 on GPUs
//     without bf16 tensor cores), accumulating in at::opmath_type.
//   * linear_relu_gemm_tensor_core_kernel: fp16 / bf16 on tensor cores through
//     nvcuda::wmma with fp32 accumulators (sm_80+).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

#include <fusedmlp/cuda_utils.cuh>
#include <fusedmlp/linear_relu.h>

namespace fusedmlp {
namespace {

// ---------------------------------------------------------------------------
// Operand views. Each exposes value_t, load(r, c) for any strides, and a
// vector load used only when the tile loader has checked that the fastest
// dimension is unit-stride and suitably aligned.
// ---------------------------------------------------------------------------

template <typename T>
struct StridedMatrix {
  using value_t = T;
  const T* data;
  int64_t row_stride;
  int64_t col_stride;

  __device__ T load(int64_t r, int64_t c) const {
    return data[r * row_stride + c * col_stride];
  }

  // The caller guarantees the fast stride is 1, so the V elements are contiguous.
  template <int V>
  __device__ void load_vector(int64_t r, int64_t c, T (&dst)[V]) const {
    const auto vec = *reinterpret_cast<const AlignedVector<T, V>*>(data + r * row_stride + c * col_stride);
#pragma unroll
    for (int e = 0; e < V; ++e) dst[e] = vec.val[e];
  }

  // Walk the dimension with the smaller stride across adjacent threads so that a
  // warp's loads coalesce whichever way the tensor is laid out.
  __device__ bool cols_fastest() const { return col_stride <= row_stride; }

  // Every vector a tile loader issues starts at a multiple of V along the fast
  // dimension, so base alignment plus a slow stride divisible by V covers them all.
  template <int V>
  __device__ bool vector_aligned(bool cols_fast) const {
    const int64_t fast = cols_fast ? col_stride : row_stride;
    const int64_t slow = cols_fast ? row_stride : col_stride;
    return fast == 1 && slow % V == 0 && reinterpret_cast<uintptr_t>(data) % (sizeof(T) * V) == 0;
  }
};

// grad_pre = relu ? grad_output * (output > 0) : grad_output, evaluated on load.
// A select rather than a multiply, exactly threshold_backward's rule (output <= 0
// gives 0): an inf/NaN gradient under a dead unit still gives 0, and a NaN output
// passes its gradient through, as in torch.
template <typename T>
__device__ __forceinline__ T relu_grad(T grad, T output) {
  using acc_t = at::opmath_type<T>;
  return static_cast<acc_t>(output) <= acc_t(0) ? T(0) : grad;
}

template <typename T>
struct ReluMaskedMatrix {
  using value_t = T;
  StridedMatrix<T> grad;
  StridedMatrix<T> output;  // same logical shape as grad; only its sign is used

  __device__ T load(int64_t r, int64_t c) const { return relu_grad(grad.load(r, c), output.load(r, c)); }

  template <int V>
  __device__ void load_vector(int64_t r, int64_t c, T (&dst)[V]) const {
    T g[V], o[V];
    grad.template load_vector<V>(r, c, g);
    output.template load_vector<V>(r, c, o);
#pragma unroll
    for (int e = 0; e < V; ++e) dst[e] = relu_grad(g[e], o[e]);
  }

  __device__ bool cols_fastest() const { return grad.cols_fastest(); }

  template <int V>
  __device__ bool vector_aligned(bool cols_fast) const {
    return grad.template vector_aligned<V>(cols_fast) && output.template vector_aligned<V>(cols_fast);
  }
};

// ---------------------------------------------------------------------------
// Global -> register -> shared tile loader. Loading into registers first lets
// the next K tile's global loads be in flight while the current tile is being
// multiplied out of shared memory (one buffer, register prefetch).
// ---------------------------------------------------------------------------

template <typename Operand, int ROWS, int COLS, int THREADS>
struct TileLoader {
  using T = typename Operand::value_t;
  // 16-byte global loads where possible, but never more than a thread's share.
  static constexpr int kVec = std::min<int>(16 / sizeof(T), ROWS * COLS / THREADS);
  static constexpr int kVecsPerThread = ROWS * COLS / (kVec * THREADS);
  static_assert(ROWS % kVec == 0 && COLS % kVec == 0, "tile edges must be whole vectors");
  static_assert(kVecsPerThread * kVec * THREADS == ROWS * COLS, "threads must cover the tile exactly");

  T regs[kVecsPerThread][kVec];
  bool cols_fast;
  bool vectorized;

  __device__ explicit TileLoader(const Operand& src)
      : cols_fast(src.cols_fastest()), vectorized(src.template vector_aligned<kVec>(src.cols_fastest())) {}

  // Tile-local origin of this thread's v-th vector; its elements run along the fast dimension.
  __device__ void vector_origin(int v, int& r, int& c) const {
    const int linear = static_cast<int>(threadIdx.x) + v * THREADS;
    if (cols_fast) {
      r = linear / (COLS / kVec);
      c = (linear % (COLS / kVec)) * kVec;
    } else {
      c = linear / (ROWS / kVec);
      r = (linear % (ROWS / kVec)) * kVec;
    }
  }

  // Loads the tile at (row0, col0) of a rows x cols matrix; out-of-range elements
  // become zero so K tails add nothing and M/N tails are simply not stored.
  __device__ void load(const Operand& src, int64_t row0, int64_t col0, int64_t rows, int64_t cols) {
#pragma unroll
    for (int v = 0; v < kVecsPerThread; ++v) {
      int r, c;
      vector_origin(v, r, c);
      const int64_t gr = row0 + r, gc = col0 + c;
      const bool whole = cols_fast ? (gr < rows && gc + kVec <= cols) : (gc < cols && gr + kVec <= rows);
      if (vectorized && whole) {
        src.template load_vector<kVec>(gr, gc, regs[v]);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const int64_t er = cols_fast ? gr : gr + e;
          const int64_t ec = cols_fast ? gc + e : gc;
          regs[v][e] = (er < rows && ec < cols) ? src.load(er, ec) : T(0);
        }
      }
    }
  }

  // Writes tile element (r, c) to smem[r * SMEM_ROW_STRIDE + c * SMEM_COL_STRIDE].
  template <int SMEM_ROW_STRIDE, int SMEM_COL_STRIDE>
  __device__ void store(T* smem) const {
#pragma unroll
    for (int v = 0; v < kVecsPerThread; ++v) {
      int r, c;
      vector_origin(v, r, c);
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const int er = cols_fast ? r : r + e;
        const int ec = cols_fast ? c + e : c;
        smem[er * SMEM_ROW_STRIDE + ec * SMEM_COL_STRIDE] = regs[v][e];
      }
    }
  }
};

// Consecutive blocks walk down a group of row tiles before moving right, so the
// B column panels they share stay in L2 (the grouped ordering of Triton's
// matmul tutorial). A 1-D grid also avoids gridDim.y's 65535 limit.
constexpr int64_t kGroupRowTiles = 8;

__device__ void grouped_tile_origin(int64_t M, int64_t N, int64_t tile_m, int64_t tile_n, int64_t& row0,
                                    int64_t& col0) {
  const int64_t tiles_m = ceil_div(M, tile_m);
  const int64_t tiles_n = ceil_div(N, tile_n);
  const int64_t pid = blockIdx.x;
  const int64_t tiles_per_group = kGroupRowTiles * tiles_n;
  const int64_t first_tile_m = (pid / tiles_per_group) * kGroupRowTiles;
  const int64_t group_rows = std::min<int64_t>(tiles_m - first_tile_m, int64_t{kGroupRowTiles});
  const int64_t pid_in_group = pid % tiles_per_group;
  row0 = (first_tile_m + pid_in_group % group_rows) * tile_m;
  col0 = (pid_in_group / group_rows) * tile_n;
}

// Bias and ReLU are applied to the fp32/fp64 accumulator, before rounding to the
// storage dtype. `v < 0 ? 0 : v` keeps NaN, like torch.relu.
template <typename acc_t>
__device__ __forceinline__ acc_t linear_relu_epilogue(acc_t v, acc_t bias, bool relu) {
  v += bias;
  return (relu && v < acc_t(0)) ? acc_t(0) : v;
}

// Split-K (see launch_linear_relu_gemm): block row blockIdx.y of the grid sums k in
// [k_begin, k_end) and writes its partial [M, N] to slice blockIdx.y of `out`. Without a
// split (gridDim.y == 1, k_split == K) this is the whole reduction and `out` itself.
template <typename out_t>
__device__ __forceinline__ void split_k_range(int64_t K, int64_t k_split, int64_t& k_begin, int64_t& k_end,
                                              out_t*& out, int64_t slice) {
  k_begin = static_cast<int64_t>(blockIdx.y) * k_split;
  k_end = std::min(K, k_begin + k_split);
  out += static_cast<int64_t>(blockIdx.y) * slice;
}

// out = epilogue(sum over splits s, in order, of partials[s]): the second pass of a split-K
// GEMM, one thread per output element (consecutive threads, consecutive elements).
template <typename scalar_t, typename acc_t>
__global__ void split_k_reduce_kernel(const acc_t* partials, int64_t splits, const scalar_t* bias,
                                      int64_t bias_stride, bool relu, scalar_t* out, int64_t M, int64_t N) {
  const int64_t numel = M * N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    acc_t sum = acc_t(0);
    for (int64_t s = 0; s < splits; ++s) sum += partials[s * numel + i];
    const acc_t bias_v = bias != nullptr ? static_cast<acc_t>(bias[(i % N) * bias_stride]) : acc_t(0);
    out[i] = static_cast<scalar_t>(linear_relu_epilogue(sum, bias_v, relu));
  }
}

// ---------------------------------------------------------------------------
// CUDA-core GEMM. 64x64 block tiles keep enough blocks in flight for the narrow
// layers (width 32-512) this library targets; 256 threads each own a 4x4
// accumulator patch, read from shared memory as two short vectors per k.
// ---------------------------------------------------------------------------

struct SimtConfig {
  static constexpr int kBlockM = 64, kBlockN = 64, kBlockK = 16;
  static constexpr int kThreadM = 4, kThreadN = 4;
  static constexpr int kThreads = (kBlockM / kThreadM) * (kBlockN / kThreadN);
};

template <typename T, int N>
__device__ __forceinline__ void load_smem_fragment(const T* src, at::opmath_type<T> (&dst)[N]) {
  constexpr int V = std::min<int>(N, 16 / sizeof(T));
#pragma unroll
  for (int i = 0; i < N; i += V) {
    const auto vec = *reinterpret_cast<const AlignedVector<T, V>*>(src + i);
#pragma unroll
    for (int e = 0; e < V; ++e) dst[i + e] = static_cast<at::opmath_type<T>>(vec.val[e]);
  }
}

template <typename scalar_t, typename out_t, typename OperandA, typename OperandB>
__global__ void __launch_bounds__(SimtConfig::kThreads)
    linear_relu_gemm_kernel(OperandA a, OperandB b, const scalar_t* bias, int64_t bias_stride, bool relu,
                            out_t* out, int64_t M, int64_t N, int64_t K, int64_t k_split) {
  using acc_t = at::opmath_type<scalar_t>;
  using C = SimtConfig;
  // Pad rows by 16 bytes: keeps every row 16-byte aligned for the vector reads
  // below while shifting banks between rows for the transposed A stores.
  constexpr int kPad = 16 / sizeof(scalar_t);
  // A is stored k-major (transposed) so a thread's kThreadM rows are contiguous.
  __shared__ __align__(16) scalar_t a_tile[C::kBlockK][C::kBlockM + kPad];
  __shared__ __align__(16) scalar_t b_tile[C::kBlockK][C::kBlockN + kPad];

  int64_t row0, col0;
  grouped_tile_origin(M, N, C::kBlockM, C::kBlockN, row0, col0);
  int64_t k_begin, k_end;
  split_k_range(K, k_split, k_begin, k_end, out, M * N);
  const int tx = threadIdx.x % (C::kBlockN / C::kThreadN);
  const int ty = threadIdx.x / (C::kBlockN / C::kThreadN);

  TileLoader<OperandA, C::kBlockM, C::kBlockK, C::kThreads> a_loader(a);
  TileLoader<OperandB, C::kBlockK, C::kBlockN, C::kThreads> b_loader(b);
  a_loader.load(a, row0, k_begin, M, k_end);
  b_loader.load(b, k_begin, col0, k_end, N);

  acc_t acc[C::kThreadM][C::kThreadN] = {};
  for (int64_t k0 = k_begin; k0 < k_end; k0 += C::kBlockK) {
    a_loader.template store<1, C::kBlockM + kPad>(&a_tile[0][0]);
    b_loader.template store<C::kBlockN + kPad, 1>(&b_tile[0][0]);
    __syncthreads();
    if (k0 + C::kBlockK < k_end) {
      a_loader.load(a, row0, k0 + C::kBlockK, M, k_end);
      b_loader.load(b, k0 + C::kBlockK, col0, k_end, N);
    }
#pragma unroll
    for (int kk = 0; kk < C::kBlockK; ++kk) {
      acc_t a_frag[C::kThreadM], b_frag[C::kThreadN];
      load_smem_fragment(&a_tile[kk][ty * C::kThreadM], a_frag);
      load_smem_fragment(&b_tile[kk][tx * C::kThreadN], b_frag);
#pragma unroll
      for (int i = 0; i < C::kThreadM; ++i) {
#pragma unroll
        for (int j = 0; j < C::kThreadN; ++j) acc[i][j] += a_frag[i] * b_frag[j];
      }
    }
    __syncthreads();
  }

  acc_t bias_frag[C::kThreadN];
#pragma unroll
  for (int j = 0; j < C::kThreadN; ++j) {
    const int64_t col = col0 + tx * C::kThreadN + j;
    bias_frag[j] = (bias != nullptr && col < N) ? static_cast<acc_t>(bias[col * bias_stride]) : acc_t(0);
  }
#pragma unroll
  for (int i = 0; i < C::kThreadM; ++i) {
    const int64_t row = row0 + ty * C::kThreadM + i;
    if (row >= M) continue;
#pragma unroll
    for (int j = 0; j < C::kThreadN; ++j) {
      const int64_t col = col0 + tx * C::kThreadN + j;
      if (col < N) out[row * N + col] = static_cast<out_t>(linear_relu_epilogue(acc[i][j], bias_frag[j], relu));
    }
  }
}

// ---------------------------------------------------------------------------
// Tensor-core GEMM (fp16 / bf16, fp32 accumulate). Four warps in a 2x2 layout,
// each owning a 32x32 patch as 2x2 wmma 16x16x16 fragments.
// ---------------------------------------------------------------------------

struct TensorCoreConfig {
  static constexpr int kBlockM = 64, kBlockN = 64, kBlockK = 32;
  static constexpr int kWarpM = 32, kWarpN = 32, kFrag = 16;
  static constexpr int kWarpsN = kBlockN / kWarpN;
  static constexpr int kThreads = 32 * (kBlockM / kWarpM) * kWarpsN;
  // 8 halfs (16 bytes) of padding: wmma needs ldm % 8 == 0 and 32-byte aligned
  // fragment pointers, and the skew keeps fragment loads free of bank conflicts.
  static constexpr int kPadAB = 8;
  static constexpr int kPadC = 4;  // float staging tile: ldm % 4 == 0
};

template <typename scalar_t, typename out_t, typename OperandA, typename OperandB>
__global__ void __launch_bounds__(TensorCoreConfig::kThreads)
    linear_relu_gemm_tensor_core_kernel(OperandA a, OperandB b, const scalar_t* bias, int64_t bias_stride,
                                        bool relu, out_t* out, int64_t M, int64_t N, int64_t K, int64_t k_split) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // Never launched: the host picks the CUDA-core kernel below sm_80.
  __trap();
#else
  namespace wmma = nvcuda::wmma;
  using C = TensorCoreConfig;
  using mma_t = typename CudaReducedFloat<scalar_t>::type;
  __shared__ __align__(128) scalar_t a_tile[C::kBlockM][C::kBlockK + C::kPadAB];
  __shared__ __align__(128) scalar_t b_tile[C::kBlockK][C::kBlockN + C::kPadAB];
  // Accumulators go through shared memory so the epilogue knows each value's
  // (row, col): wmma's register layout is opaque.
  __shared__ __align__(128) float c_tile[C::kBlockM][C::kBlockN + C::kPadC];

  int64_t row0, col0;
  grouped_tile_origin(M, N, C::kBlockM, C::kBlockN, row0, col0);
  int64_t k_begin, k_end;
  split_k_range(K, k_split, k_begin, k_end, out, M * N);
  const int warp = threadIdx.x / 32;
  const int warp_row = (warp / C::kWarpsN) * C::kWarpM;
  const int warp_col = (warp % C::kWarpsN) * C::kWarpN;
  constexpr int kFragsM = C::kWarpM / C::kFrag, kFragsN = C::kWarpN / C::kFrag;

  TileLoader<OperandA, C::kBlockM, C::kBlockK, C::kThreads> a_loader(a);
  TileLoader<OperandB, C::kBlockK, C::kBlockN, C::kThreads> b_loader(b);
  a_loader.load(a, row0, k_begin, M, k_end);
  b_loader.load(b, k_begin, col0, k_end, N);

  wmma::fragment<wmma::accumulator, C::kFrag, C::kFrag, C::kFrag, float> acc[kFragsM][kFragsN];
#pragma unroll
  for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
    for (int j = 0; j < kFragsN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }

  for (int64_t k0 = k_begin; k0 < k_end; k0 += C::kBlockK) {
    a_loader.template store<C::kBlockK + C::kPadAB, 1>(&a_tile[0][0]);
    b_loader.template store<C::kBlockN + C::kPadAB, 1>(&b_tile[0][0]);
    __syncthreads();
    if (k0 + C::kBlockK < k_end) {
      a_loader.load(a, row0, k0 + C::kBlockK, M, k_end);
      b_loader.load(b, k0 + C::kBlockK, col0, k_end, N);
    }
#pragma unroll
    for (int kk = 0; kk < C::kBlockK; kk += C::kFrag) {
      wmma::fragment<wmma::matrix_a, C::kFrag, C::kFrag, C::kFrag, mma_t, wmma::row_major> a_frag[kFragsM];
      wmma::fragment<wmma::matrix_b, C::kFrag, C::kFrag, C::kFrag, mma_t, wmma::row_major> b_frag[kFragsN];
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {
        const auto* src = reinterpret_cast<const mma_t*>(&a_tile[warp_row + i * C::kFrag][kk]);
        wmma::load_matrix_sync(a_frag[i], src, C::kBlockK + C::kPadAB);
      }
#pragma unroll
      for (int j = 0; j < kFragsN; ++j) {
        const auto* src = reinterpret_cast<const mma_t*>(&b_tile[kk][warp_col + j * C::kFrag]);
        wmma::load_matrix_sync(b_frag[j], src, C::kBlockN + C::kPadAB);
      }
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) wmma::mma_sync(acc[i][j], a_frag[i], b_frag[j], acc[i][j]);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
    for (int j = 0; j < kFragsN; ++j) {
      wmma::store_matrix_sync(&c_tile[warp_row + i * C::kFrag][warp_col + j * C::kFrag], acc[i][j],
                              C::kBlockN + C::kPadC, wmma::mem_row_major);
    }
  }
  __syncthreads();

  // Each pass of the block writes whole rows of the tile: coalesced stores.
  for (int idx = threadIdx.x; idx < C::kBlockM * C::kBlockN; idx += C::kThreads) {
    const int r = idx / C::kBlockN, c = idx % C::kBlockN;
    const int64_t row = row0 + r, col = col0 + c;
    if (row < M && col < N) {
      const float bias_v = bias != nullptr ? static_cast<float>(bias[col * bias_stride]) : 0.0f;
      out[row * N + col] = static_cast<out_t>(linear_relu_epilogue(c_tile[r][c], bias_v, relu));
    }
  }
#endif
}

// ---------------------------------------------------------------------------
// Bias gradient: column sums of grad_pre, with the ReLU mask fused into the load.
// Block (32 cols x 8 rows): each warp reads 32 adjacent columns of one row
// (coalesced for row-major grads), threads stride down their chunk of rows,
// then the 8 partials are added in a fixed order. Tall inputs are split into
// row chunks whose count depends only on M; a second launch of the same kernel
// sums the chunk partials, so the result never depends on scheduling.
// ---------------------------------------------------------------------------

constexpr int kBiasGradCols = 32;
constexpr int kBiasGradRows = 8;
constexpr int64_t kBiasGradMinRowsPerChunk = 256;
constexpr int64_t kBiasGradMaxChunks = 1024;

template <typename Operand, typename out_t>
__global__ void __launch_bounds__(kBiasGradCols* kBiasGradRows)
    relu_bias_grad_kernel(Operand grad, out_t* out, int64_t rows, int64_t cols, int64_t rows_per_chunk) {
  using acc_t = at::opmath_type<typename Operand::value_t>;
  __shared__ acc_t partial[kBiasGradRows][kBiasGradCols + 1];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kBiasGradCols + threadIdx.x;
  const int64_t row_begin = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t row_end = std::min(rows, row_begin + rows_per_chunk);

  acc_t sum = acc_t(0);
  if (col < cols) {
    for (int64_t r = row_begin + threadIdx.y; r < row_end; r += kBiasGradRows) {
      sum += static_cast<acc_t>(grad.load(r, col));
    }
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    acc_t total = acc_t(0);
#pragma unroll
    for (int i = 0; i < kBiasGradRows; ++i) total += partial[i][threadIdx.x];
    out[static_cast<int64_t>(blockIdx.y) * cols + col] = static_cast<out_t>(total);
  }
}

// ---------------------------------------------------------------------------
// Launch plans: host code without CUDA calls (tests/cuda_emulation launches the kernels on
// the CPU with it)
// ---------------------------------------------------------------------------

template <int BLOCK_M, int BLOCK_N>
unsigned int gemm_grid_size(int64_t M, int64_t N) {
  const int64_t tiles = ceil_div(M, BLOCK_M) * ceil_div(N, BLOCK_N);
  TORCH_CHECK(tiles <= std::numeric_limits<int32_t>::max(), "linear_relu: problem of size ", M, "x", N,
              " needs too many thread blocks (", tiles, ")");
  return static_cast<unsigned int>(tiles);
}

// Both GEMM bodies tile the output alike, so the grid and the split-K choice below are shared.
static_assert(SimtConfig::kBlockM == TensorCoreConfig::kBlockM && SimtConfig::kBlockN == TensorCoreConfig::kBlockN,
              "the GEMM kernels must share their output tile");
constexpr int kGemmTileM = SimtConfig::kBlockM, kGemmTileN = SimtConfig::kBlockN;

// Split-K. An output with fewer tiles than the GPU has SMs leaves most SMs idle while each of
// its blocks walks the whole reduction: the weight gradient of a narrow layer is such a GEMM
// (an [N, K] output summed over every row of the batch; 30 x 50 at batch 2^20 was one block
// doing all the work, which made the per-layer path 0.08x eager on an H200). Those GEMMs split
// the reduction into ranges, one grid row each, writing accumulation-dtype partials, and a
// second kernel adds the partials in a fixed order and applies the epilogue. The split depends
// only on the shape and the SM count, so results are reproducible on a given GPU.
constexpr int64_t kSplitKMinLength = 1024;  // reductions per split: keeps the partials' traffic small
constexpr int64_t kSplitKMaxSplits = 256;   // bounds the partials' memory
constexpr int kSplitKReduceThreads = 256;

// Reduction length per split (a multiple of block_k) on a GPU of `sms` SMs; K itself when the
// GEMM is not split.
int64_t split_k_length(int64_t tiles, int64_t K, int64_t block_k, int64_t sms) {
  if (tiles >= sms || K < 2 * kSplitKMinLength) return K;
  const int64_t splits = std::min({ceil_div(2 * sms, tiles), K / kSplitKMinLength, kSplitKMaxSplits});
  return splits > 1 ? ceil_div(ceil_div(K, splits), block_k) * block_k : K;
}

// Rows per chunk of the bias gradient's first pass (relu_bias_grad_kernel): the count of
// chunks depends only on M.
int64_t bias_grad_rows_per_chunk(int64_t M) {
  return std::max(kBiasGradMinRowsPerChunk, ceil_div(M, kBiasGradMaxChunks));
}

template <typename scalar_t>
StridedMatrix<scalar_t> strided_view(const at::Tensor& t, bool transpose = false) {
  const int64_t s0 = t.stride(0), s1 = t.stride(1);
  return {t.const_data_ptr<scalar_t>(), transpose ? s1 : s0, transpose ? s0 : s1};
}

// ---------------------------------------------------------------------------
// Host side: launchers
// ---------------------------------------------------------------------------

// One launch of a GEMM body over grid (tiles, splits); out is [splits, M, N].
template <typename scalar_t, typename out_t, typename OperandA, typename OperandB>
void launch_gemm_blocks(bool tensor_cores, const OperandA& a, const OperandB& b, const scalar_t* bias,
                        int64_t bias_stride, bool relu, out_t* out, int64_t M, int64_t N, int64_t K,
                        int64_t k_split, int64_t splits, cudaStream_t stream) {
  const dim3 grid(gemm_grid_size<kGemmTileM, kGemmTileN>(M, N), static_cast<unsigned int>(splits));
  if constexpr (kIsReducedFloat<scalar_t>) {
    if (tensor_cores) {
      linear_relu_gemm_tensor_core_kernel<scalar_t, out_t><<<grid, TensorCoreConfig::kThreads, 0, stream>>>(
          a, b, bias, bias_stride, relu, out, M, N, K, k_split);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  linear_relu_gemm_kernel<scalar_t, out_t><<<grid, SimtConfig::kThreads, 0, stream>>>(a, b, bias, bias_stride, relu,
                                                                                      out, M, N, K, k_split);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// out[M, N] (contiguous) = epilogue(a[M, K] @ b[K, N]). bias may be null. `options` (device,
// dtype) are those of the result, for the split-K partials.
template <typename scalar_t, typename OperandA, typename OperandB>
void launch_linear_relu_gemm(const OperandA& a, const OperandB& b, const scalar_t* bias, int64_t bias_stride,
                             bool relu, scalar_t* out, int64_t M, int64_t N, int64_t K,
                             const at::TensorOptions& options) {
  if (M == 0 || N == 0) return;
  using acc_t = at::opmath_type<scalar_t>;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // wmma bf16 needs sm_80; fp16 is kept on the same path for one code path to test.
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  const bool tensor_cores = kIsReducedFloat<scalar_t> && props->major >= 8;
  const int64_t tiles = ceil_div(M, kGemmTileM) * ceil_div(N, kGemmTileN);
  const int64_t k_split = split_k_length(tiles, K, tensor_cores ? TensorCoreConfig::kBlockK : SimtConfig::kBlockK,
                                         props->multiProcessorCount);
  if (k_split >= K) {
    launch_gemm_blocks<scalar_t>(tensor_cores, a, b, bias, bias_stride, relu, out, M, N, K, K, 1, stream);
    return;
  }
  const int64_t splits = ceil_div(K, k_split);
  at::Tensor partials = at::empty({splits, M, N}, options.dtype(c10::CppTypeToScalarType<acc_t>::value));
  launch_gemm_blocks<scalar_t>(tensor_cores, a, b, static_cast<const scalar_t*>(nullptr), 0, false,
                               partials.mutable_data_ptr<acc_t>(), M, N, K, k_split, splits, stream);
  const int64_t blocks = std::min<int64_t>(ceil_div(M * N, kSplitKReduceThreads), 65535);
  split_k_reduce_kernel<scalar_t, acc_t><<<static_cast<unsigned int>(blocks), kSplitKReduceThreads, 0, stream>>>(
      partials.const_data_ptr<acc_t>(), splits, bias, bias_stride, relu, out, M, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// grad_bias[N] = sum over rows of grad (an [M, N] operand view).
template <typename scalar_t, typename Operand>
void launch_relu_bias_grad(const Operand& grad, int64_t M, int64_t N, at::Tensor& grad_bias) {
  if (N == 0) return;
  using acc_t = at::opmath_type<scalar_t>;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t rows_per_chunk = bias_grad_rows_per_chunk(M);
  const int64_t chunks = std::max<int64_t>(1, ceil_div(M, rows_per_chunk));
  const dim3 block(kBiasGradCols, kBiasGradRows);
  const dim3 grid(static_cast<unsigned int>(ceil_div(N, kBiasGradCols)), static_cast<unsigned int>(chunks));
  scalar_t* result = grad_bias.mutable_data_ptr<scalar_t>();
  if (chunks == 1) {
    relu_bias_grad_kernel<<<grid, block, 0, stream>>>(grad, result, M, N, rows_per_chunk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  // Partials stay in the accumulation dtype so the split adds no rounding step.
  at::Tensor partials =
      at::empty({chunks, N}, grad_bias.options().dtype(at::toOpMathType(grad_bias.scalar_type())));
  relu_bias_grad_kernel<<<grid, block, 0, stream>>>(grad, partials.mutable_data_ptr<acc_t>(), M, N, rows_per_chunk);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const StridedMatrix<acc_t> partial_view{partials.const_data_ptr<acc_t>(), N, 1};
  relu_bias_grad_kernel<<<dim3(grid.x, 1), block, 0, stream>>>(partial_view, result, chunks, N, chunks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor linear_relu_fwd_cuda(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, bool relu) {
  check_linear_relu_fwd_args(input, weight, bias);
  TORCH_CHECK(input.is_cuda(), "linear_relu_fwd: expected CUDA tensors, got input on ", input.device());
  const c10::cuda::CUDAGuard device_guard(input.device());

  const int64_t M = input.size(0), K = input.size(1), N = weight.size(0);
  at::Tensor output = at::empty({M, N}, input.options());
  if (output.numel() == 0) return output;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "linear_relu_fwd_cuda", [&] {
    const auto x = strided_view<scalar_t>(input);
    // weight is [N, K]; the GEMM wants B[k, n] = weight[n, k]: swap its strides.
    const auto w_t = strided_view<scalar_t>(weight, /*transpose=*/true);
    const scalar_t* bias_ptr = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
    const int64_t bias_stride = bias.has_value() ? bias->stride(0) : 0;
    launch_linear_relu_gemm<scalar_t>(x, w_t, bias_ptr, bias_stride, relu, output.mutable_data_ptr<scalar_t>(), M,
                                      N, K, output.options());
  });
  return output;
}

// grad_pre = relu ? grad_output * (output > 0) : grad_output is never stored:
// each consumer reads it through a (possibly transposed) masked view.
template <typename scalar_t, typename GradView>
void linear_relu_bwd_launch(const GradView& grad_pre, const GradView& grad_pre_t, const at::Tensor& input,
                            const at::Tensor& weight, std::array<bool, 3> output_mask, at::Tensor& grad_input,
                            at::Tensor& grad_weight, at::Tensor& grad_bias) {
  const int64_t M = input.size(0), K = input.size(1), N = weight.size(0);
  if (output_mask[0]) {  // grad_input[M, K] = grad_pre[M, N] @ weight[N, K]
    launch_linear_relu_gemm<scalar_t>(grad_pre, strided_view<scalar_t>(weight), nullptr, 0, false,
                                      grad_input.mutable_data_ptr<scalar_t>(), M, K, N, grad_input.options());
  }
  if (output_mask[1]) {  // grad_weight[N, K] = grad_pre^T[N, M] @ input[M, K]
    launch_linear_relu_gemm<scalar_t>(grad_pre_t, strided_view<scalar_t>(input), nullptr, 0, false,
                                      grad_weight.mutable_data_ptr<scalar_t>(), N, K, M, grad_weight.options());
  }
  if (output_mask[2]) {  // grad_bias[N] = grad_pre.sum(0)
    launch_relu_bias_grad<scalar_t>(grad_pre, M, N, grad_bias);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_relu_bwd_cuda(const at::Tensor& grad_output,
                                                                    const at::Tensor& input,
                                                                    const at::Tensor& weight,
                                                                    const at::Tensor& output, bool relu,
                                                                    std::array<bool, 3> output_mask) {
  check_linear_relu_bwd_args(grad_output, input, weight, output);
  TORCH_CHECK(input.is_cuda(), "linear_relu_bwd: expected CUDA tensors, got input on ", input.device());
  const c10::cuda::CUDAGuard device_guard(input.device());

  const int64_t M = input.size(0), K = input.size(1), N = weight.size(0);
  const auto options = input.options();
  // Outputs with a zero-length reduction (M == 0 for grad_weight / grad_bias) are
  // still launched: the kernels write zeros when nothing is accumulated.
  at::Tensor grad_input = output_mask[0] ? at::empty({M, K}, options) : at::empty({0}, options);
  at::Tensor grad_weight = output_mask[1] ? at::empty({N, K}, options) : at::empty({0}, options);
  at::Tensor grad_bias = output_mask[2] ? at::empty({N}, options) : at::empty({0}, options);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "linear_relu_bwd_cuda", [&] {
    const auto g = strided_view<scalar_t>(grad_output);
    const auto g_t = strided_view<scalar_t>(grad_output, /*transpose=*/true);
    if (relu) {
      const auto o = strided_view<scalar_t>(output);
      const auto o_t = strided_view<scalar_t>(output, /*transpose=*/true);
      linear_relu_bwd_launch<scalar_t>(ReluMaskedMatrix<scalar_t>{g, o}, ReluMaskedMatrix<scalar_t>{g_t, o_t},
                                       input, weight, output_mask, grad_input, grad_weight, grad_bias);
    } else {
      linear_relu_bwd_launch<scalar_t>(g, g_t, input, weight, output_mask, grad_input, grad_weight, grad_bias);
    }
  });
  return std::make_tuple(std::move(grad_input), std::move(grad_weight), std::move(grad_bias));
}

}  // namespace
}  // namespace fusedmlp

TORCH_LIBRARY_IMPL(fusedmlp, CUDA, m) {
  m.impl("linear_relu_fwd", &fusedmlp::linear_relu_fwd_cuda);
  m.impl("linear_relu_bwd", &fusedmlp::linear_relu_bwd_cuda);
}
