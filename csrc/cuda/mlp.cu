// CUDA kernels for the whole-network MLP ops mlp_fwd / mlp_bwd (schemas in csrc/fusedmlp.cpp,
// semantics in fusedmlp/ops/mlp.py's mlp_fwd_torch / mlp_bwd_torch) for narrow networks: every
// width at most 128, at most 8 layers (check_fused_mlp_coverage in fusedmlp/mlp.h).
//
// Every width is padded to one power-of-two tile width W in {16, 32, 64, 128}. A block owns a
// tile of kRows batch rows and runs the whole network on it, so hidden activations and
// gradients never leave the chip between layers (the forward still writes the hidden ReLU
// outputs once, for the backward). Shared memory holds the current layer's weights
// zero-padded to W x W, and the batch tile padded to W columns. Padded weights are zero and
// every epilogue writes zeros into padded columns, so padding never reaches a real value, even
// when an inf in a real value would turn a multiplication by a padded zero into NaN. On CUDA
// cores a layer narrower than W computes only the part of the tile it needs (round_up4 below).
//
// Products: fp16 / bf16 on tensor cores through nvcuda::wmma (16x16x16, fp32 accumulators);
// fp32 on CUDA cores with fp32 FMAs (no TF32, like torch's default fp32 matmul), or, in the
// experimental build FUSEDMLP_MLP_TF32X3=1, on tensor cores as three TF32 products (below);
// fp64 on CUDA cores in fp64. Every layer's result is rounded to the input dtype before it
// feeds the next layer, as nn.Sequential does.
//
// Tiles: 128 threads (4 warps) per block; kRows batch rows per tile: 128 (fp16 / bf16, W <= 64),
// 64 (fp16 / bf16, W = 128; fp32), 32 (fp64).
//
// Forward: one block per batch tile; per layer out = act(in @ W^T + b) in the accumulator
// dtype, bias added in the epilogue, ReLU on hidden layers, one rounding.
//
// Backward: a persistent grid of P = min(tiles, SMs x min(4, resident blocks per SM)) blocks,
// which depends only on the batch size and the device. Block p walks tiles p, p + P, ... and,
// for every layer whose gradient is wanted, accumulates its partial dW / db in its own slice
// of a workspace in the accumulator dtype ([P, sum over wanted layers of W * W + W]: plain
// loads and stores to memory only it touches, no atomics). A second kernel adds the P
// partials in a fixed order and rounds once to the parameter dtype, so the result is bitwise
// the same run to run. Per tile and layer: db += column sums of the gradient tile G,
// dW += G^T @ In, then G = mask(round(G @ W)) for the layer below, where mask is
// threshold_backward's rule (a gradient passes where NOT (activation <= 0), so a NaN
// activation passes it). Layers below the lowest wanted gradient are skipped.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAMacros.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <fusedmlp/cuda_utils.cuh>
#include <fusedmlp/mlp.h>

namespace fusedmlp {
namespace {

constexpr int kMaxLayers = static_cast<int>(kFusedMlpMaxLayers);
constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
// CUDA-core products with 16-byte shared loads (simt_product), built when setup.py is run with
// FUSEDMLP_MLP_VECTOR_LOADS=1: an experiment until the H200 measures it beside the default
// (bench/gpu_check.sh, stage mlp_vector_loads). A first version of it, the forward alone at 128
// registers and four blocks per SM, was 2-7% slower there; this one keeps the forward at the
// five blocks the default runs at and also covers the backward. The default build is the
// kernel as measured (scalar loads, pitch W + 1).
#ifndef FUSEDMLP_MLP_VECTOR_LOADS
#define FUSEDMLP_MLP_VECTOR_LOADS 0
#endif
constexpr bool kSimtVectorLoads = FUSEDMLP_MLP_VECTOR_LOADS != 0;
// fp32 products on tensor cores as 3xTF32, built when setup.py is run with
// FUSEDMLP_MLP_TF32X3=1: an experiment until the H200 measures it (bench/gpu_check.sh, stage
// mlp_tf32x3). Why: at 64x4 on 2^20 rows the step's 103 GFLOP take 1.54 ms even at the H200's
// fp32 FMA peak (~67 TFLOP/s), so CUDA cores cap the step at 4.8x eager; TF32 tensor cores
// run 8x that peak, three products per multiply 2.7x. Each fp32 operand x is split into
// big = x truncated to TF32 (10 mantissa bits; truncation cannot overflow) and small =
// TF32(x - big) (x - big is exact in fp32), and a * b = a.big * b.small + a.small * b.big +
// a.big * b.big, dropping a.small * b.small: every product keeps about 21 of fp32's 24 bits
// and is summed in fp32, an error of the order of an fp32 dot product's over these lengths
// (the technique of CUTLASS's 3xTF32 GEMMs). Counted in the sm_90 SASS at W = 64: the forward's
// and the input gradient's inner loops issue 92 instructions per 8192 multiply-adds of a warp
// (24 HMMA; the weights split once per tile and layer, kSplitWeights), the weight gradient's
// 174 (both of its operands split in the loop), the fp32 FMA loops 184 per 4096. Not the same
// as fp32 in one case: an inf operand whose partner's small part is exactly zero (a partner
// that is a TF32 value, e.g. 0.5) gives NaN where fp32 gives inf (inf * 0 in a cross term).
#ifndef FUSEDMLP_MLP_TF32X3
#define FUSEDMLP_MLP_TF32X3 0
#endif
constexpr bool kFp32TensorCores = FUSEDMLP_MLP_TF32X3 != 0;
template <typename scalar_t>
constexpr bool kOnTensorCores = kIsReducedFloat<scalar_t> || (kFp32TensorCores && std::is_same_v<scalar_t, float>);
// Register budget: ask ptxas for as many resident blocks per SM as shared memory allows on
// sm_90 (228 KB per SM, 1 KB of it reserved per block), at most `most`: four (at most 128
// registers per thread), or, with vector loads, five for the CUDA-core forward (96 registers,
// which the default build's forward uses unasked). More registers where shared memory limits
// residency anyway.
constexpr size_t kSmemPerSm = 228 * 1024;
constexpr size_t kSmemReservedPerBlock = 1024;
constexpr int min_blocks_per_sm(size_t smem_bytes, size_t most) {
  return static_cast<int>(std::clamp<size_t>(kSmemPerSm / (smem_bytes + kSmemReservedPerBlock), 1, most));
}
// The backward's persistent grid holds at most this many blocks per SM: as many as the launch
// bounds aim for. A tile's work between barriers is small at these widths (a 64 x 32 x 32 fp32
// product is 512 FMAs a thread), so the backward wants every warp an SM can hold, as the
// forward (one block per tile) gets; at 2 per SM it ran with half of them wherever four fit.
// The workspace and the reduction grow with the grid: at most 70 MB of fp32 partials (eight
// 64-wide layers, 4 x 132 SMs); 128-wide tiles fit at most two blocks per SM anyway.
constexpr int64_t kMaxBwdBlocksPerSm = 4;
// The gradient reduction's block: kReduceCols elements x kReduceGroups groups of partials.
constexpr int kReduceCols = 32;
constexpr int kReduceGroups = 8;

constexpr size_t align_smem(size_t bytes) {
  return (bytes + 127) / 128 * 128;
}

// Tensor cores (fp16, bf16; fp32 as 3xTF32): warp w owns tile rows [w * kWarpRows, (w + 1) *
// kWarpRows) for the row-wise products (forward, input gradient). Narrow fp16 / bf16 tiles give
// each warp two 16-row fragments, so a weight fragment is loaded once per two MMAs; either way a
// warp holds at most 64 fp32 accumulators per thread. fp32 keeps one: its tiles take twice the
// bytes, and at 64 rows the W = 64 backward (68 KB with its split weights) fits three blocks per
// SM, at 128 rows two.
template <typename scalar_t, int W>
struct TensorCoreTile {
  static constexpr int kRowFrags = W <= 64 && sizeof(scalar_t) == 2 ? 2 : 1;
  static constexpr int kWarpRows = 16 * kRowFrags;
  static constexpr int kColFrags = W / 16;
  static constexpr int kRows = kWarps * kWarpRows;
};

// CUDA cores (fp32, fp64): thread (tr, tc) = (tid / 16, tid % 16) owns rows tr + i * kRowThreads
// and columns tc + j * kColThreads of a block-wide product, so at each k a warp reads two rows
// of one operand (broadcasts) and 16 consecutive elements of the other.
template <typename scalar_t, int W>
struct SimtTile {
  static constexpr int kColThreads = 16;
  static constexpr int kRowThreads = kThreads / kColThreads;
  static constexpr int kThreadCols = W / kColThreads;
  static constexpr int kRows = sizeof(scalar_t) == 8 ? 32 : 64;
  static constexpr int kThreadRows = kRows / kRowThreads;
  // The weight gradient [W, W] is produced in chunks of kGradRowsPerThread * kRowThreads rows.
  static constexpr int kGradRowsPerThread = std::min(kThreadRows, W / kRowThreads);
};

// Tile geometry and shared memory layout for one (dtype, padded width W) instantiation.
template <typename scalar_t, int W>
struct MlpTile {
  static_assert(W == 16 || W == 32 || W == 64 || W == 128, "tile width must be 16, 32, 64 or 128");
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr bool kTensorCores = kOnTensorCores<scalar_t>;
  using Layout = std::conditional_t<kTensorCores, TensorCoreTile<scalar_t, W>, SimtTile<scalar_t, W>>;
  static constexpr int kRows = Layout::kRows;

  // Row pitch (elements) of every shared tile. Tensor cores: 16 bytes of skew keep ldm a
  // multiple of 16 bytes and every fragment pointer 32-byte aligned, and shift banks between rows.
  // CUDA cores: an odd pitch puts the rows a warp reads at one k in different banks; with
  // vector loads, 16 bytes of skew keep rows 16-byte aligned, and the 16 rows a warp loads 16
  // bytes of at once start 4 banks apart (the two wavefronts of 256 bytes).
  static constexpr int kLd = kTensorCores || kSimtVectorLoads ? W + 16 / static_cast<int>(sizeof(scalar_t)) : W + 1;
  // The CUDA-core backward keeps the layer's weights transposed where it loads them 16 bytes
  // at a time along the input gradient's reduction (grad_below_simt).
  static constexpr bool kWeightsTransposedInBwd = !kTensorCores && kSimtVectorLoads;

  static constexpr size_t kTileBytes = align_smem(sizeof(scalar_t) * kRows * kLd);
  // 3xTF32 keeps the layer's weights split (big, then small: load_weights_3xtf32), once per tile
  // and layer instead of once per warp and use, up to W = 64: at 128 the split weights (132 KB)
  // would leave room for one forward block per SM instead of two.
  static constexpr bool kSplitWeights = kTensorCores && std::is_same_v<scalar_t, float> && W <= 64;
  static constexpr size_t kWeightBytes = align_smem(sizeof(scalar_t) * W * kLd) * (kSplitWeights ? 2 : 1);
  static constexpr size_t kBiasBytes = align_smem(sizeof(acc_t) * W);
  // Each warp turns one 16x16 fp32 accumulator fragment at a time into dtype values here
  // (wmma's register layout does not say which element is where; 3xTF32's mma.sync's does).
  static constexpr size_t kStageBytes = kIsReducedFloat<scalar_t> ? sizeof(float) * kWarps * 16 * 16 : 0;
  // Forward: activation tile, weights, bias, staging. Backward: gradient tile, the layer's
  // input tile (also the ReLU mask of the layer below), weights (kWeightsTransposedInBwd), staging.
  static constexpr size_t kFwdSmem = kTileBytes + kWeightBytes + kBiasBytes + kStageBytes;
  static constexpr size_t kBwdSmem = 2 * kTileBytes + kWeightBytes + kStageBytes;
  static constexpr int kFwdMinBlocks = min_blocks_per_sm(kFwdSmem, !kTensorCores && kSimtVectorLoads ? 5 : 4);
  static constexpr int kBwdMinBlocks = min_blocks_per_sm(kBwdSmem, 4);
};

// The network, passed by value in the kernel's argument block. Every tensor is contiguous.
template <typename scalar_t>
struct MlpNetwork {
  const scalar_t* weight[kMaxLayers];  // [width[i + 1], width[i]] (nn.Linear layout)
  int32_t width[kMaxLayers + 1];       // width[0]: input features; width[i + 1]: layer i's outputs
  int32_t layers;
};

template <typename scalar_t>
struct MlpFwdArgs {
  MlpNetwork<scalar_t> net;
  const scalar_t* bias[kMaxLayers];  // [width[i + 1]], or all null without biases
  const scalar_t* input;             // [rows, width[0]]
  scalar_t* out[kMaxLayers];         // [rows, width[i + 1]]: the hidden activations, then the output
  int64_t rows;
};

template <typename scalar_t>
struct MlpBwdArgs {
  using acc_t = at::opmath_type<scalar_t>;
  MlpNetwork<scalar_t> net;
  const scalar_t* input;                   // [rows, width[0]]
  const scalar_t* activation[kMaxLayers];  // [rows, width[i + 1]] for the hidden layers
  const scalar_t* grad_output;             // [rows, width[layers]]
  scalar_t* grad_input;                    // [rows, width[0]], or null when not wanted
  acc_t* workspace;                        // [gridDim.x, workspace_stride]: one slice per block
  int64_t workspace_stride;
  // Offsets into a block's slice of layer i's partial dW (padded [W, W], row-major) and
  // partial db ([W]); -1 when that gradient is not wanted.
  int32_t weight_slot[kMaxLayers];
  int32_t bias_slot[kMaxLayers];
  // Layers lowest_layer..layers-1 are visited; below lowest_layer nothing is wanted.
  int32_t lowest_layer;
  int64_t rows;
};

template <typename scalar_t>
struct MlpGradReduceArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* workspace;
  int64_t workspace_stride;
  int32_t partials;
  int32_t tile_width;
  int32_t count;                       // number of gradients (dW or db) to write
  scalar_t* dst[2 * kMaxLayers];       // contiguous [rows, cols]
  int32_t slot[2 * kMaxLayers];        // offset of its padded partial in a workspace slice
  int32_t cols[2 * kMaxLayers];
  int64_t begin[2 * kMaxLayers + 1];   // prefix sums of rows * cols: gradient j owns [begin[j], begin[j + 1])
};

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

// dst[r * LD + c] = src[(row0 + r) * cols + c] for r < ROWS, c < W; zero outside the
// valid rows / cols, which is the padding every product relies on.
template <typename scalar_t, int ROWS, int W, int LD>
__device__ __forceinline__ void load_tile(scalar_t* dst, const scalar_t* src, int64_t row0, int64_t rows,
                                          int cols) {
  for (int idx = threadIdx.x; idx < ROWS * W; idx += kThreads) {
    const int r = idx / W, c = idx % W;
    const int64_t gr = row0 + r;
    dst[r * LD + c] = (gr < rows && c < cols) ? src[gr * cols + c] : scalar_t(0);
  }
}

// dst[c * LD + r] = src[r * cols + c] for r < W, c < W: the [rows, cols] matrix transposed, zero
// outside the valid rows / cols. Global reads stay coalesced; the shared stores of a warp land
// 4 banks apart at LD = W + 4 (a 4-way conflict, on 32 elements a thread per layer and tile).
template <typename scalar_t, int W, int LD>
__device__ __forceinline__ void load_tile_transposed(scalar_t* dst, const scalar_t* src, int rows, int cols) {
  for (int idx = threadIdx.x; idx < W * W; idx += kThreads) {
    const int r = idx / W, c = idx % W;
    dst[c * LD + r] = (r < rows && c < cols) ? src[r * cols + c] : scalar_t(0);
  }
}

// threshold_backward(grad, activation, 0): the gradient passes where NOT (activation <= 0).
template <typename scalar_t>
__device__ __forceinline__ scalar_t relu_mask(scalar_t grad, scalar_t activation) {
  using acc_t = at::opmath_type<scalar_t>;
  return static_cast<acc_t>(activation) <= acc_t(0) ? scalar_t(0) : grad;
}

// db[n] (+)= sum over the tile's rows of grad[r][n], rows in order. Thread n owns column n of
// its block's slice, so the read-modify-write needs no atomics.
template <typename scalar_t, int W, int ROWS, int LD>
__device__ __forceinline__ void accumulate_bias_grad(const scalar_t* grad, at::opmath_type<scalar_t>* partial,
                                                     bool first) {
  using acc_t = at::opmath_type<scalar_t>;
  const int n = threadIdx.x;
  if (n >= W) return;
  acc_t sum = acc_t(0);
#pragma unroll 8
  for (int r = 0; r < ROWS; ++r) sum += static_cast<acc_t>(grad[r * LD + n]);
  partial[n] = first ? sum : partial[n] + sum;
}

// ---------------------------------------------------------------------------
// CUDA cores (fp32, fp64)
// ---------------------------------------------------------------------------

[[maybe_unused]] __device__ __forceinline__ float multiply_add(float a, float b, float c) {
  return fmaf(a, b, c);
}
__device__ __forceinline__ double multiply_add(double a, double b, double c) {
  return fma(a, b, c);
}

// acc[i][j] += sum_k A(tr * TR + i * RT, k) * B(k, tc + j * CT) for k < k_end and j < TN_ACTIVE,
// where A(r, k) = a[r * A_RS + k * A_CS] and B(k, c) = b[k * B_RS + c * B_CS] in shared memory:
// a thread's rows are interleaved with the other threads' (TR = 1, RT = row threads) or
// consecutive (TR = TM, RT = 1). Every caller passes a multiple of 4 as k_end; columns
// j >= TN_ACTIVE keep their accumulators.
//
// The scalar loop issues TM + TN_ACTIVE shared loads per TM * TN_ACTIVE FMAs (12 per 32 at W = 64
// in fp32). With kSimtVectorLoads, where the layout allows, a thread loads 16 bytes (4 fp32 / 2
// fp64 values) at once:
// - both operands run along k in memory (A_CS == B_RS == 1): vectors of k, a quarter of the
//   loads (the forward, the input gradient);
// - a thread's rows of A are consecutive in memory (RT == 1, A_RS == 1): vectors of rows for A,
//   TM / 4 + TN_ACTIVE loads (the weight gradient).
// Each accumulator still adds its products in order of k, so every loop gives the same bits.
template <int TM, int TN, int TN_ACTIVE, int TR, int RT, int CT, int A_RS, int A_CS, int B_RS, int B_CS,
          typename scalar_t, typename acc_t>
__device__ __forceinline__ void simt_product(acc_t (&acc)[TM][TN], const scalar_t* a, const scalar_t* b, int tr,
                                             int tc, int k_end) {
  static_assert(TN_ACTIVE >= 1 && TN_ACTIVE <= TN, "active column groups out of range");
  constexpr int V = 16 / sizeof(scalar_t);
  using Vec = AlignedVector<scalar_t, V>;
  if constexpr (kSimtVectorLoads && A_CS == 1 && B_RS == 1 && A_RS % V == 0 && B_CS % V == 0 && 4 % V == 0) {
    const scalar_t* a_rows = a + tr * TR * A_RS;
#pragma unroll 1
    for (int k = 0; k < k_end; k += V) {
      Vec bv[TN_ACTIVE];
#pragma unroll
      for (int j = 0; j < TN_ACTIVE; ++j) bv[j] = *reinterpret_cast<const Vec*>(b + (tc + j * CT) * B_CS + k);
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const Vec av = *reinterpret_cast<const Vec*>(a_rows + i * RT * A_RS + k);
#pragma unroll
        for (int kk = 0; kk < V; ++kk) {
#pragma unroll
          for (int j = 0; j < TN_ACTIVE; ++j) {
            acc[i][j] = multiply_add(static_cast<acc_t>(av.val[kk]), static_cast<acc_t>(bv[j].val[kk]), acc[i][j]);
          }
        }
      }
    }
  } else if constexpr (kSimtVectorLoads && RT == 1 && A_RS == 1 && TM % V == 0 && TR % V == 0 && A_CS % V == 0) {
    const scalar_t* a_rows = a + tr * TR;
#pragma unroll 4
    for (int k = 0; k < k_end; ++k) {
      acc_t bv[TN_ACTIVE];
#pragma unroll
      for (int j = 0; j < TN_ACTIVE; ++j) bv[j] = static_cast<acc_t>(b[k * B_RS + (tc + j * CT) * B_CS]);
#pragma unroll
      for (int i0 = 0; i0 < TM; i0 += V) {
        const Vec av = *reinterpret_cast<const Vec*>(a_rows + k * A_CS + i0);
#pragma unroll
        for (int ii = 0; ii < V; ++ii) {
#pragma unroll
          for (int j = 0; j < TN_ACTIVE; ++j) {
            acc[i0 + ii][j] = multiply_add(static_cast<acc_t>(av.val[ii]), bv[j], acc[i0 + ii][j]);
          }
        }
      }
    }
  } else {
#pragma unroll 4
    for (int k = 0; k < k_end; ++k) {
      acc_t av[TM], bv[TN_ACTIVE];
#pragma unroll
      for (int i = 0; i < TM; ++i) av[i] = static_cast<acc_t>(a[(tr * TR + i * RT) * A_RS + k * A_CS]);
#pragma unroll
      for (int j = 0; j < TN_ACTIVE; ++j) bv[j] = static_cast<acc_t>(b[k * B_RS + (tc + j * CT) * B_CS]);
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN_ACTIVE; ++j) acc[i][j] = multiply_add(av[i], bv[j], acc[i][j]);
      }
    }
  }
}

// Per-layer trimming of the padded products on CUDA cores. A tile is W wide for the widest
// layer, but a layer with fewer inputs or outputs only needs part of it: the reduction runs
// over the real length rounded up to 4 (the padding it skips holds zeros), and only the
// 16-column groups that hold real output columns are computed (the others are zero, as the
// epilogues write them). At 50-30-20-3 (W = 64) this is 3008 instead of 12288 multiply-adds
// per row in the forward.
__host__ __device__ constexpr int round_up4(int n) {
  return (n + 3) / 4 * 4;
}

// fn(std::integral_constant<int, G>{}) for G = max(1, min(groups, MAX)): the product code
// specialised for the number of column groups that are computed.
template <int MAX, typename Fn>
__device__ __forceinline__ void with_column_groups(int groups, Fn&& fn) {
  if constexpr (MAX > 1) {
    if (groups < MAX) return with_column_groups<MAX - 1>(groups, fn);
  }
  fn(std::integral_constant<int, MAX>{});
}

// act[r][:] = act(act[r][:] @ weights^T + bias), in place, and the valid part to out.
template <typename scalar_t, int W>
__device__ void fwd_layer_simt(scalar_t* act, const scalar_t* weights, const at::opmath_type<scalar_t>* bias,
                               int in_features, int out_features, bool relu, scalar_t* out, int64_t row0,
                               int64_t rows) {
  using Tile = MlpTile<scalar_t, W>;
  using acc_t = typename Tile::acc_t;
  using Simt = SimtTile<scalar_t, W>;
  constexpr int LD = Tile::kLd, TM = Simt::kThreadRows, TN = Simt::kThreadCols;
  constexpr int RT = Simt::kRowThreads, CT = Simt::kColThreads;
  const int tr = threadIdx.x / CT, tc = threadIdx.x % CT;
  acc_t acc[TM][TN] = {};
  // C[r][n] = sum_k act[r][k] * weights[n][k]
  with_column_groups<TN>(static_cast<int>(ceil_div(out_features, CT)), [&](auto groups) {
    simt_product<TM, TN, decltype(groups)::value, 1, RT, CT, LD, 1, 1, LD>(acc, act, weights, tr, tc,
                                                                         round_up4(in_features));
  });
  __syncthreads();  // every thread has read the tile it is about to overwrite
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = tr + i * RT;
    const int64_t gr = row0 + r;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = tc + j * CT;
      acc_t v = acc[i][j] + bias[n];
      if (relu && v < acc_t(0)) v = acc_t(0);  // keeps NaN, like torch.relu
      const scalar_t value = n < out_features ? static_cast<scalar_t>(v) : scalar_t(0);
      act[r * LD + n] = value;
      if (gr < rows && n < out_features) out[gr * out_features + n] = value;
    }
  }
}

// partial dW[n][k] (+)= sum_r grad[r][n] * in[r][k] over the tile's rows, for the column groups
// that hold real inputs k < in_features (the reduction reads no other column). Each thread
// owns a fixed set of (n, k) of its block's slice: no atomics. With vector loads its rows n are
// consecutive, so it loads its part of a gradient row 16 bytes at a time.
template <typename scalar_t, int W>
__device__ void weight_grad_simt(const scalar_t* grad, const scalar_t* in, int in_features,
                                 at::opmath_type<scalar_t>* partial, bool first) {
  using Tile = MlpTile<scalar_t, W>;
  using acc_t = typename Tile::acc_t;
  using Simt = SimtTile<scalar_t, W>;
  constexpr int LD = Tile::kLd, TM = Simt::kGradRowsPerThread, TN = Simt::kThreadCols;
  constexpr int RT = Simt::kRowThreads, CT = Simt::kColThreads;
  // Thread tr's rows of a chunk: tr * TR + i * RI.
  constexpr int TR = kSimtVectorLoads ? TM : 1, RI = kSimtVectorLoads ? 1 : RT;
  const int tr = threadIdx.x / CT, tc = threadIdx.x % CT;
  with_column_groups<TN>(static_cast<int>(ceil_div(in_features, CT)), [&](auto groups) {
    constexpr int G = decltype(groups)::value;
    for (int n0 = 0; n0 < W; n0 += TM * RT) {
      acc_t acc[TM][G];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < G; ++j) {
          acc[i][j] = first ? acc_t(0) : partial[(n0 + tr * TR + i * RI) * W + tc + j * CT];
        }
      }
      // A(n, r) = grad[r][n0 + n], B(r, k) = in[r][k]
      simt_product<TM, G, G, TR, RI, CT, 1, LD, LD, 1>(acc, grad + n0, in, tr, tc, Tile::kRows);
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < G; ++j) partial[(n0 + tr * TR + i * RI) * W + tc + j * CT] = acc[i][j];
      }
    }
  });
}

// grad[r][:] = mask(round(grad[r][:] @ weights), in[r][:]) in place (no mask for the input
// layer, whose result goes to grad_input instead). With kWeightsTransposedInBwd `weights` holds
// the layer's weights transposed ([in][out], load_tile_transposed), so both operands run along
// the reduction in shared memory and simt_product loads them 16 bytes at a time.
template <typename scalar_t, int W>
__device__ void grad_below_simt(scalar_t* grad, const scalar_t* weights, const scalar_t* in, int in_features,
                                int out_features, bool mask, scalar_t* grad_input, int64_t row0, int64_t rows) {
  using Tile = MlpTile<scalar_t, W>;
  using acc_t = typename Tile::acc_t;
  using Simt = SimtTile<scalar_t, W>;
  constexpr int LD = Tile::kLd, TM = Simt::kThreadRows, TN = Simt::kThreadCols;
  constexpr int RT = Simt::kRowThreads, CT = Simt::kColThreads;
  const int tr = threadIdx.x / CT, tc = threadIdx.x % CT;
  acc_t acc[TM][TN] = {};
  // C[r][k] = sum_n grad[r][n] * W[n][k], W[n][k] at weights[n * W_NS + k * W_KS]
  constexpr bool kTransposed = Tile::kWeightsTransposedInBwd;
  constexpr int W_NS = kTransposed ? 1 : LD, W_KS = kTransposed ? LD : 1;
  with_column_groups<TN>(static_cast<int>(ceil_div(in_features, CT)), [&](auto groups) {
    simt_product<TM, TN, decltype(groups)::value, 1, RT, CT, LD, 1, W_NS, W_KS>(acc, grad, weights, tr, tc,
                                                                               round_up4(out_features));
  });
  __syncthreads();  // every thread has read the gradient tile it is about to overwrite
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = tr + i * RT;
    const int64_t gr = row0 + r;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int k = tc + j * CT;
      scalar_t value = static_cast<scalar_t>(acc[i][j]);
      if (mask) value = relu_mask(value, in[r * LD + k]);
      if (k >= in_features) value = scalar_t(0);
      grad[r * LD + k] = value;
      if (grad_input != nullptr && gr < rows && k < in_features) grad_input[gr * in_features + k] = value;
    }
  }
}

// ---------------------------------------------------------------------------
// Tensor cores (fp16, bf16; sm_80+)
// ---------------------------------------------------------------------------

using AccumulatorFragment = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;

// Finishes one 16x16 accumulator fragment whose top-left corner is tile element (tile_row0,
// col0): through the warp's staging buffer, lane l takes row l / 2, columns (l % 2) * 8 + 0..7,
// computes each value with finish(tile_row, col, float) -> scalar_t, stores it to the shared
// tile and, for valid rows and columns, to dst ([rows, cols], row-major) when dst is not null.
template <typename scalar_t, int LD, typename Finish>
__device__ __forceinline__ void finish_fragment(const AccumulatorFragment& acc, float* stage, scalar_t* tile,
                                                int tile_row0, int col0, Finish finish, scalar_t* dst,
                                                int64_t row0, int64_t rows, int cols) {
  namespace wmma = nvcuda::wmma;
  wmma::store_matrix_sync(stage, acc, 16, wmma::mem_row_major);
  __syncwarp();
  const int lane = threadIdx.x % 32;
  const int r = lane / 2, c = (lane % 2) * 8;
  const int tile_row = tile_row0 + r, col = col0 + c;
  AlignedVector<scalar_t, 8> values;
#pragma unroll
  for (int e = 0; e < 8; ++e) values.val[e] = finish(tile_row, col + e, stage[r * 16 + c + e]);
  // One 16-byte store: LD and col are multiples of 8 elements.
  *reinterpret_cast<AlignedVector<scalar_t, 8>*>(tile + tile_row * LD + col) = values;
  const int64_t gr = row0 + tile_row;
  if (dst != nullptr && gr < rows) {
    scalar_t* out = dst + gr * cols + col;
    // 16-byte stores when whole rows are; the caller's tensors are fresh allocations.
    if (cols % 8 == 0 && col + 8 <= cols) {
      *reinterpret_cast<AlignedVector<scalar_t, 8>*>(out) = values;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        if (col + e < cols) out[e] = values.val[e];
      }
    }
  }
  __syncwarp();  // the staging buffer is reused by the next fragment
}

// The warp's rows of tile = tile @ B, where B(k, n) comes from `b` (pitch LD) as a row-major
// ([k][n]) or column-major ([n][k]) wmma operand; every accumulator of the warp is complete
// before any is finished, so the result can overwrite the warp's own rows.
template <typename scalar_t, int W, typename BLayout, typename Finish>
__device__ __forceinline__ void warp_rows_product(scalar_t* tile, const scalar_t* b, float* stage, Finish finish,
                                                  scalar_t* dst, int64_t row0, int64_t rows, int cols) {
  namespace wmma = nvcuda::wmma;
  using mma_t = typename CudaReducedFloat<scalar_t>::type;
  constexpr int LD = MlpTile<scalar_t, W>::kLd;
  constexpr int RF = TensorCoreTile<scalar_t, W>::kRowFrags, CF = TensorCoreTile<scalar_t, W>::kColFrags;
  constexpr bool kBRowMajor = std::is_same_v<BLayout, wmma::row_major>;
  const int warp_row0 = (threadIdx.x / 32) * TensorCoreTile<scalar_t, W>::kWarpRows;
  const auto* a = reinterpret_cast<const mma_t*>(tile);
  const auto* bm = reinterpret_cast<const mma_t*>(b);

  AccumulatorFragment acc[RF][CF];
#pragma unroll
  for (int i = 0; i < RF; ++i) {
#pragma unroll
    for (int j = 0; j < CF; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }
  // Not unrolled: all CF weight fragments of a step are live at once, and unrolling the
  // steps as well would hold several steps' worth.
#pragma unroll 1
  for (int kk = 0; kk < CF; ++kk) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major> a_frag[RF];
#pragma unroll
    for (int i = 0; i < RF; ++i) wmma::load_matrix_sync(a_frag[i], a + (warp_row0 + i * 16) * LD + kk * 16, LD);
#pragma unroll
    for (int j = 0; j < CF; ++j) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, BLayout> b_frag;
      // Row-major B(k, n) = b[k][n]; column-major B(k, n) = b[n][k].
      const mma_t* b_ptr = kBRowMajor ? bm + kk * 16 * LD + j * 16 : bm + j * 16 * LD + kk * 16;
      wmma::load_matrix_sync(b_frag, b_ptr, LD);
#pragma unroll
      for (int i = 0; i < RF; ++i) wmma::mma_sync(acc[i][j], a_frag[i], b_frag, acc[i][j]);
    }
  }
  __syncwarp();  // every lane has loaded its operands before the rows are overwritten
#pragma unroll
  for (int i = 0; i < RF; ++i) {
#pragma unroll
    for (int j = 0; j < CF; ++j) {
      finish_fragment<scalar_t, LD>(acc[i][j], stage, tile, warp_row0 + i * 16, j * 16, finish, dst, row0, rows,
                                    cols);
    }
  }
}

// partial dW (+)= grad^T @ in over the tile's rows, on tensor cores. Warp w owns dW row strips
// w, w + kWarps, ... of 16 rows each; its accumulators round-trip through its own part of the
// block's workspace slice.
template <typename scalar_t, int W>
__device__ void weight_grad_tensor_core(const scalar_t* grad, const scalar_t* in, float* partial, bool first) {
  namespace wmma = nvcuda::wmma;
  using mma_t = typename CudaReducedFloat<scalar_t>::type;
  constexpr int LD = MlpTile<scalar_t, W>::kLd, CF = TensorCoreTile<scalar_t, W>::kColFrags;
  const auto* g = reinterpret_cast<const mma_t*>(grad);
  const auto* x = reinterpret_cast<const mma_t*>(in);
  for (int fn = threadIdx.x / 32; fn < CF; fn += kWarps) {
    float* strip = partial + fn * 16 * W;
    AccumulatorFragment acc[CF];
#pragma unroll
    for (int j = 0; j < CF; ++j) {
      if (first) {
        wmma::fill_fragment(acc[j], 0.0f);
      } else {
        wmma::load_matrix_sync(acc[j], strip + j * 16, W, wmma::mem_row_major);
      }
    }
#pragma unroll 1
    for (int rr = 0; rr < TensorCoreTile<scalar_t, W>::kRows / 16; ++rr) {
      // A(n, r) = grad[r][fn * 16 + n]: the gradient tile read column-major.
      wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::col_major> a_frag;
      wmma::load_matrix_sync(a_frag, g + rr * 16 * LD + fn * 16, LD);
#pragma unroll
      for (int j = 0; j < CF; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::row_major> b_frag;
        wmma::load_matrix_sync(b_frag, x + rr * 16 * LD + j * 16, LD);
        wmma::mma_sync(acc[j], a_frag, b_frag, acc[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < CF; ++j) wmma::store_matrix_sync(strip + j * 16, acc[j], W, wmma::mem_row_major);
  }
}

// Tensor cores for fp32: 3xTF32 (kFp32TensorCores; sm_80+)
// ---------------------------------------------------------------------------
// PTX mma.sync m16n8k8 with TF32 operands, its fragments loaded from shared memory as the PTX
// ISA lays them out (wmma's TF32 fragments compiled to generic loads with 64-bit address math
// and a software TF32 rounding per element, as many instructions per multiply-add as the fp32
// FMA loop). Lane l = 4 g + t of a warp holds a[r] = A(g + 8 (r % 2), t + 4 (r / 2)) of the
// 16x8 A, b[r] = B(t + 4 r, g) of the 8x8 B and d[r] = D(g + 8 (r / 2), 2 t + r % 2) of the
// 16x8 result (the same as CUTLASS's CuTe traits for SM80_16x8x8_F32TF32TF32F32_TN). A warp
// owns the tile's rows [16 w, 16 w + 16) (TensorCoreTile: one row fragment).

// D += A @ B on TF32 operands (an fp32 word whose 13 low mantissa bits the tensor core ignores).
// FUSEDMLP_CUDA_EMULATION: compiled with g++ by tests/test_cuda_emulated.py, which runs the
// instruction through tests/cuda_emulation/cuda_emulation.h.
__device__ __forceinline__ void mma_tf32_m16n8k8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef FUSEDMLP_CUDA_EMULATION
  cuda_emulation::mma_tf32_m16n8k8(d, a, b);
#else
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Where lane l (= 4 g + t) of the warp holds each element of the fragments (the layouts above):
// the row and column of its register r of A, of B and of the accumulator.
[[maybe_unused]] __device__ __forceinline__ int mma_a_row(int lane, int r) { return lane / 4 + 8 * (r % 2); }
[[maybe_unused]] __device__ __forceinline__ int mma_a_col(int lane, int r) { return lane % 4 + 4 * (r / 2); }
[[maybe_unused]] __device__ __forceinline__ int mma_b_row(int lane, int r) { return lane % 4 + 4 * r; }
[[maybe_unused]] __device__ __forceinline__ int mma_b_col(int lane) { return lane / 4; }
[[maybe_unused]] __device__ __forceinline__ int mma_acc_row(int lane, int r) { return lane / 4 + 8 * (r / 2); }
[[maybe_unused]] __device__ __forceinline__ int mma_acc_col(int lane, int r) { return 2 * (lane % 4) + r % 2; }

// x = big + small + O(2^-22 |x|): big = x with its 13 low mantissa bits cleared (truncation,
// which cannot overflow), small = x - big (exact in fp32) rounded to the nearest TF32 by
// integer add and mask, ties away from zero. A non-finite x is all big (small = 0), so an inf
// times a finite weight stays inf as in an fp32 product (x - big would be NaN).
[[maybe_unused]] __device__ __forceinline__ void split_tf32(float x, uint32_t& big, uint32_t& small) {
  const uint32_t bits = __float_as_uint(x) & 0xffffe000u;
  big = bits;
  small = fabsf(x) < INFINITY ? (__float_as_uint(x - __uint_as_float(bits)) + 0x1000u) & 0xffffe000u : 0u;
}

// The lane's A fragment of the 16x8 matrix A(m, k) = p[m * M_STRIDE + k * K_STRIDE], split.
template <int M_STRIDE, int K_STRIDE>
__device__ __forceinline__ void load_tf32_a(uint32_t (&big)[4], uint32_t (&small)[4], const float* p) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    split_tf32(p[mma_a_row(lane, r) * M_STRIDE + mma_a_col(lane, r) * K_STRIDE], big[r], small[r]);
  }
}

// The layer's weights [rows, cols] for 3xTF32, zero-padded to W x W as load_tile pads them and
// split: big at dst[r * LD + c], small at dst[W * LD + r * LD + c].
template <int W, int LD>
__device__ __forceinline__ void load_weights_3xtf32(float* dst, const float* src, int rows, int cols) {
  for (int idx = threadIdx.x; idx < W * W; idx += kThreads) {
    const int r = idx / W, c = idx % W;
    uint32_t big, small;
    split_tf32((r < rows && c < cols) ? src[r * cols + c] : 0.0f, big, small);
    dst[r * LD + c] = __uint_as_float(big);
    dst[W * LD + r * LD + c] = __uint_as_float(small);
  }
}

// The lane's B fragment of the 8x8 matrix B(k, n) = p[k * K_STRIDE + n * N_STRIDE], split.
template <int K_STRIDE, int N_STRIDE>
__device__ __forceinline__ void load_tf32_b(uint32_t (&big)[2], uint32_t (&small)[2], const float* p) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    split_tf32(p[mma_b_row(lane, r) * K_STRIDE + mma_b_col(lane) * N_STRIDE], big[r], small[r]);
  }
}

// The same from weights split by load_weights_3xtf32: big at p, small at p + SMALL_OFFSET.
template <int K_STRIDE, int N_STRIDE, int SMALL_OFFSET>
__device__ __forceinline__ void load_split_tf32_b(uint32_t (&big)[2], uint32_t (&small)[2], const float* p) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int offset = mma_b_row(lane, r) * K_STRIDE + mma_b_col(lane) * N_STRIDE;
    big[r] = __float_as_uint(p[offset]);
    small[r] = __float_as_uint(p[SMALL_OFFSET + offset]);
  }
}

// d += a @ b in 3xTF32: the two small cross terms first, then the big one.
[[maybe_unused]] __device__ __forceinline__ void mma_3xtf32(float (&d)[4], const uint32_t (&a_big)[4],
                                                            const uint32_t (&a_small)[4], const uint32_t (&b_big)[2],
                                                            const uint32_t (&b_small)[2]) {
  mma_tf32_m16n8k8(d, a_big, b_small);
  mma_tf32_m16n8k8(d, a_small, b_big);
  mma_tf32_m16n8k8(d, a_big, b_big);
}

// The warp's 16 rows of tile = tile @ B, B(k, n) = weights[k * B_KS + n * B_NS], split by
// load_weights_3xtf32 where MlpTile::kSplitWeights, else here (the forward's weights [n][k]:
// B_KS = 1, B_NS = LD; the input gradient's [k][n]: B_KS = LD, B_NS = 1).
// Each result value v of tile element (row, col) becomes finish(row, col, v), stored to the
// tile and, for valid rows and columns, to dst ([rows, cols]) when dst is not null.
template <int W, int B_KS, int B_NS, typename Finish>
__device__ __forceinline__ void warp_rows_product_3xtf32(float* tile, const float* weights, Finish finish, float* dst,
                                                         int64_t row0, int64_t rows, int cols) {
  constexpr int LD = MlpTile<float, W>::kLd, kColTiles = W / 8;
  const int warp_row0 = (threadIdx.x / 32) * 16;
  const int lane = threadIdx.x % 32;
  float acc[kColTiles][4] = {};
  // Not unrolled: the steps' operands would all be live at once.
#pragma unroll 1
  for (int k0 = 0; k0 < W; k0 += 8) {
    uint32_t a_big[4], a_small[4];
    load_tf32_a<LD, 1>(a_big, a_small, tile + warp_row0 * LD + k0);
#pragma unroll
    for (int j = 0; j < kColTiles; ++j) {
      uint32_t b_big[2], b_small[2];
      if constexpr (MlpTile<float, W>::kSplitWeights) {
        load_split_tf32_b<B_KS, B_NS, W * LD>(b_big, b_small, weights + k0 * B_KS + j * 8 * B_NS);
      } else {
        load_tf32_b<B_KS, B_NS>(b_big, b_small, weights + k0 * B_KS + j * 8 * B_NS);
      }
      mma_3xtf32(acc[j], a_big, a_small, b_big, b_small);
    }
  }
  __syncwarp();  // every lane has loaded its operands before the warp's rows are overwritten
#pragma unroll
  for (int j = 0; j < kColTiles; ++j) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int tile_row = warp_row0 + mma_acc_row(lane, r), col = j * 8 + mma_acc_col(lane, r);
      const float value = finish(tile_row, col, acc[j][r]);
      tile[tile_row * LD + col] = value;
      const int64_t gr = row0 + tile_row;
      if (dst != nullptr && gr < rows && col < cols) dst[gr * cols + col] = value;
    }
  }
}

// partial dW (+)= grad^T @ in over the tile's rows in 3xTF32. Warp w owns dW row strips w,
// w + kWarps, ... of 16 rows each; its accumulators round-trip through its own part of the
// block's workspace slice, in the accumulator fragments' layout.
template <int W>
__device__ void weight_grad_3xtf32(const float* grad, const float* in, float* partial, bool first) {
  constexpr int LD = MlpTile<float, W>::kLd, kColTiles = W / 8;
  const int lane = threadIdx.x % 32;
  // The strip's element held in accumulator register r of column tile j.
  const auto partial_index = [lane](int j, int r) { return mma_acc_row(lane, r) * W + j * 8 + mma_acc_col(lane, r); };
  for (int strip = threadIdx.x / 32; strip < TensorCoreTile<float, W>::kColFrags; strip += kWarps) {
    float* out = partial + strip * 16 * W;
    float acc[kColTiles][4];
#pragma unroll
    for (int j = 0; j < kColTiles; ++j) {
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[j][r] = first ? 0.0f : out[partial_index(j, r)];
    }
#pragma unroll 1
    for (int r0 = 0; r0 < TensorCoreTile<float, W>::kRows; r0 += 8) {
      // A(n, r) = grad[r0 + r][strip * 16 + n]; B(r, k) = in[r0 + r][k].
      uint32_t a_big[4], a_small[4];
      load_tf32_a<1, LD>(a_big, a_small, grad + r0 * LD + strip * 16);
#pragma unroll
      for (int j = 0; j < kColTiles; ++j) {
        uint32_t b_big[2], b_small[2];
        load_tf32_b<LD, 1>(b_big, b_small, in + r0 * LD + j * 8);
        mma_3xtf32(acc[j], a_big, a_small, b_big, b_small);
      }
    }
#pragma unroll
    for (int j = 0; j < kColTiles; ++j) {
#pragma unroll
      for (int r = 0; r < 4; ++r) out[partial_index(j, r)] = acc[j][r];
    }
  }
}

// ---------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------

template <typename scalar_t, int W>
__device__ void mlp_fwd_tile(const MlpFwdArgs<scalar_t>& args) {
  using Tile = MlpTile<scalar_t, W>;
  using acc_t = typename Tile::acc_t;
  constexpr int LD = Tile::kLd;
  extern __shared__ __align__(128) unsigned char smem[];
  auto* act = reinterpret_cast<scalar_t*>(smem);
  auto* weights = reinterpret_cast<scalar_t*>(smem + Tile::kTileBytes);
  auto* bias = reinterpret_cast<acc_t*>(smem + Tile::kTileBytes + Tile::kWeightBytes);
  auto* stage = reinterpret_cast<float*>(smem + Tile::kTileBytes + Tile::kWeightBytes + Tile::kBiasBytes) +
                (threadIdx.x / 32) * 256;

  const MlpNetwork<scalar_t>& net = args.net;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * Tile::kRows;
  load_tile<scalar_t, Tile::kRows, W, LD>(act, args.input, row0, args.rows, net.width[0]);
  for (int layer = 0; layer < net.layers; ++layer) {
    const int in_features = net.width[layer], out_features = net.width[layer + 1];
    const bool relu = layer + 1 < net.layers;
    __syncthreads();  // the previous layer is done with the weights and bias
    if constexpr (Tile::kSplitWeights) {
      load_weights_3xtf32<W, LD>(weights, net.weight[layer], out_features, in_features);
    } else {
      load_tile<scalar_t, W, W, LD>(weights, net.weight[layer], 0, out_features, in_features);
    }
    const scalar_t* layer_bias = args.bias[layer];
    if (threadIdx.x < W) {
      const int n = threadIdx.x;
      bias[n] = (layer_bias != nullptr && n < out_features) ? static_cast<acc_t>(layer_bias[n]) : acc_t(0);
    }
    __syncthreads();
    if constexpr (Tile::kTensorCores) {
      const auto finish = [&](int, int col, float v) {
        v += bias[col];
        if (relu && v < 0.0f) v = 0.0f;  // keeps NaN, like torch.relu
        return col < out_features ? static_cast<scalar_t>(v) : scalar_t(0);
      };
      if constexpr (std::is_same_v<scalar_t, float>) {
        // B(k, n) = weights[n][k]
        warp_rows_product_3xtf32<W, 1, LD>(act, weights, finish, args.out[layer], row0, args.rows, out_features);
      } else {
        warp_rows_product<scalar_t, W, nvcuda::wmma::col_major>(act, weights, stage, finish, args.out[layer], row0,
                                                                args.rows, out_features);
      }
    } else {
      fwd_layer_simt<scalar_t, W>(act, weights, bias, in_features, out_features, relu, args.out[layer], row0,
                                  args.rows);
    }
  }
}

template <typename scalar_t, int W>
__device__ void mlp_bwd_tiles(const MlpBwdArgs<scalar_t>& args) {
  using Tile = MlpTile<scalar_t, W>;
  using acc_t = typename Tile::acc_t;
  constexpr int LD = Tile::kLd;
  extern __shared__ __align__(128) unsigned char smem[];
  auto* grad = reinterpret_cast<scalar_t*>(smem);
  auto* in = reinterpret_cast<scalar_t*>(smem + Tile::kTileBytes);
  auto* weights = reinterpret_cast<scalar_t*>(smem + 2 * Tile::kTileBytes);
  auto* stage =
      reinterpret_cast<float*>(smem + 2 * Tile::kTileBytes + Tile::kWeightBytes) + (threadIdx.x / 32) * 256;

  const MlpNetwork<scalar_t>& net = args.net;
  const int layers = net.layers;
  acc_t* slice = args.workspace + static_cast<int64_t>(blockIdx.x) * args.workspace_stride;
  const int64_t tiles = ceil_div(args.rows, Tile::kRows);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const bool first = tile == blockIdx.x;
    const int64_t row0 = tile * Tile::kRows;
    __syncthreads();  // the previous tile is done with the gradient tile
    // The output layer has no ReLU: its pre-activation gradient is grad_output as it is.
    load_tile<scalar_t, Tile::kRows, W, LD>(grad, args.grad_output, row0, args.rows, net.width[layers]);
    for (int layer = layers - 1; layer >= args.lowest_layer; --layer) {
      // Here `grad` holds the gradient of layer's pre-activation (zero in padded rows / columns).
      const int in_features = net.width[layer];
      const int out_features = net.width[layer + 1];
      const bool below = layer > args.lowest_layer || args.grad_input != nullptr;
      const bool mask = layer > 0;
      const int32_t weight_slot = args.weight_slot[layer], bias_slot = args.bias_slot[layer];
      __syncthreads();  // the layer above is done with the weights and the input tile
      if (below) {
        if constexpr (Tile::kWeightsTransposedInBwd) {
          load_tile_transposed<scalar_t, W, LD>(weights, net.weight[layer], out_features, in_features);
        } else if constexpr (Tile::kSplitWeights) {
          load_weights_3xtf32<W, LD>(weights, net.weight[layer], out_features, in_features);
        } else {
          load_tile<scalar_t, W, W, LD>(weights, net.weight[layer], 0, out_features, in_features);
        }
      }
      if (weight_slot >= 0 || (below && mask)) {
        const scalar_t* layer_input = layer == 0 ? args.input : args.activation[layer - 1];
        load_tile<scalar_t, Tile::kRows, W, LD>(in, layer_input, row0, args.rows, in_features);
      }
      __syncthreads();
      if (bias_slot >= 0) accumulate_bias_grad<scalar_t, W, Tile::kRows, LD>(grad, slice + bias_slot, first);
      if (weight_slot >= 0) {
        if constexpr (Tile::kTensorCores && std::is_same_v<scalar_t, float>) {
          weight_grad_3xtf32<W>(grad, in, slice + weight_slot, first);
        } else if constexpr (Tile::kTensorCores) {
          weight_grad_tensor_core<scalar_t, W>(grad, in, slice + weight_slot, first);
        } else {
          weight_grad_simt<scalar_t, W>(grad, in, in_features, slice + weight_slot, first);
        }
      }
      if (!below) break;
      scalar_t* grad_input = layer == 0 ? args.grad_input : nullptr;
      if constexpr (Tile::kTensorCores) {
        __syncthreads();  // every warp is done reading all rows of the gradient tile
        const auto finish = [&](int tile_row, int col, float v) {
          scalar_t value = static_cast<scalar_t>(v);
          if (mask) value = relu_mask(value, in[tile_row * LD + col]);
          return col < in_features ? value : scalar_t(0);
        };
        if constexpr (std::is_same_v<scalar_t, float>) {
          // B(k, n) = weights[k][n]
          warp_rows_product_3xtf32<W, LD, 1>(grad, weights, finish, grad_input, row0, args.rows, in_features);
        } else {
          warp_rows_product<scalar_t, W, nvcuda::wmma::row_major>(grad, weights, stage, finish, grad_input, row0,
                                                                   args.rows, in_features);
        }
      } else {
        // Its own barrier, after its reads, keeps the gradient tile until every thread is done.
        grad_below_simt<scalar_t, W>(grad, weights, in, in_features, out_features, mask, grad_input, row0,
                                     args.rows);
      }
    }
  }
}

// The tensor-core bodies need sm_80 (bf16 wmma, TF32 mma.sync); the host never launches them on older GPUs,
// and for such architectures only a trap is compiled.
template <typename scalar_t>
__device__ constexpr bool compiled_for_this_arch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  return !kOnTensorCores<scalar_t>;
#else
  return true;
#endif
}

template <typename scalar_t, int W>
__global__ void __launch_bounds__(kThreads, (MlpTile<scalar_t, W>::kFwdMinBlocks)) mlp_fwd_kernel(const MlpFwdArgs<scalar_t> args) {
  if constexpr (compiled_for_this_arch<scalar_t>()) {
    mlp_fwd_tile<scalar_t, W>(args);
  } else {
    __trap();
  }
}

template <typename scalar_t, int W>
__global__ void __launch_bounds__(kThreads, (MlpTile<scalar_t, W>::kBwdMinBlocks)) mlp_bwd_kernel(const MlpBwdArgs<scalar_t> args) {
  if constexpr (compiled_for_this_arch<scalar_t>()) {
    mlp_bwd_tiles<scalar_t, W>(args);
  } else {
    __trap();
  }
}

// grad[j][e] = the P partials of element e of gradient j (one per backward block), summed in a
// fixed order and rounded once to the dtype. Block (kReduceCols, kReduceGroups): threadIdx.x
// walks consecutive elements (coalesced loads), threadIdx.y = g sums partials g, g + G, g + 2G,
// ...; the G sums are then added in the order g = 0, 1, ... through shared memory. The order is
// the same every run (deterministic), and each thread's chain of dependent loads is P / G long,
// where one thread per element summing all P partials was a chain of P (256 at 2-30-20-2 on
// 2^14 rows on an H200) in the few blocks a narrow network's gradients fill (752 elements: 3).
template <typename scalar_t>
__global__ void __launch_bounds__(kReduceCols* kReduceGroups)
    mlp_grad_reduce_kernel(const MlpGradReduceArgs<scalar_t> args) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t group_sums[kReduceGroups][kReduceCols];
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kReduceCols + threadIdx.x;
  const bool active = idx < args.begin[args.count];
  int j = 0;
  int64_t local = 0;
  acc_t sum = acc_t(0);
  if (active) {
    while (idx >= args.begin[j + 1]) ++j;
    local = idx - args.begin[j];
    const int64_t r = local / args.cols[j], c = local % args.cols[j];
    const acc_t* src = args.workspace + args.slot[j] + r * args.tile_width + c;
    for (int p = threadIdx.y; p < args.partials; p += kReduceGroups) sum += src[p * args.workspace_stride];
  }
  group_sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || !active) return;
  acc_t total = group_sums[0][threadIdx.x];
#pragma unroll
  for (int g = 1; g < kReduceGroups; ++g) total += group_sums[g][threadIdx.x];
  args.dst[j][local] = static_cast<scalar_t>(total);
}

// ---------------------------------------------------------------------------
// Launch arguments: host code without CUDA calls (tests/cuda_emulation launches the kernels
// on the CPU with it)
// ---------------------------------------------------------------------------

int64_t tile_width(const at::Tensor& input, at::TensorList weights) {
  int64_t widest = input.size(1);
  for (const at::Tensor& w : weights) widest = std::max(widest, w.size(0));
  int64_t width = 16;
  while (width < widest) width *= 2;
  return width;
}

template <typename Fn>
void dispatch_tile_width(int64_t width, Fn&& fn) {
  switch (width) {
    case 16:
      return fn(std::integral_constant<int, 16>{});
    case 32:
      return fn(std::integral_constant<int, 32>{});
    case 64:
      return fn(std::integral_constant<int, 64>{});
    case 128:
      return fn(std::integral_constant<int, 128>{});
    default:
      TORCH_CHECK(false, "mlp: no fused kernel for tile width ", width);
  }
}

template <typename scalar_t>
MlpNetwork<scalar_t> network_args(const std::vector<at::Tensor>& weights, int64_t in_features) {
  MlpNetwork<scalar_t> net{};
  net.layers = static_cast<int32_t>(weights.size());
  net.width[0] = static_cast<int32_t>(in_features);
  for (size_t i = 0; i < weights.size(); ++i) {
    net.weight[i] = weights[i].const_data_ptr<scalar_t>();
    net.width[i + 1] = static_cast<int32_t>(weights[i].size(0));
  }
  return net;
}

// The forward's arguments; every tensor contiguous, `outputs` one per layer, `biases` one per
// layer or none.
template <typename scalar_t>
MlpFwdArgs<scalar_t> fwd_args(const at::Tensor& input, const std::vector<at::Tensor>& weights,
                              const std::vector<at::Tensor>& biases, const std::vector<at::Tensor>& outputs) {
  MlpFwdArgs<scalar_t> args{};
  args.net = network_args<scalar_t>(weights, input.size(1));
  for (size_t i = 0; i < weights.size(); ++i) {
    args.bias[i] = biases.empty() ? nullptr : biases[i].const_data_ptr<scalar_t>();
    args.out[i] = outputs[i].mutable_data_ptr<scalar_t>();
  }
  args.input = input.const_data_ptr<scalar_t>();
  args.rows = input.size(0);
  return args;
}

// The lowest layer the backward visits: below it no gradient is wanted (the number of layers
// when none is).
inline int lowest_wanted_layer(bool input_grad, const std::vector<bool>& weight_mask,
                               const std::vector<bool>& bias_mask) {
  int lowest = input_grad ? 0 : static_cast<int>(weight_mask.size());
  for (size_t i = 0; i < weight_mask.size(); ++i) {
    if (weight_mask[i] || (i < bias_mask.size() && bias_mask[i])) lowest = std::min(lowest, static_cast<int>(i));
  }
  return lowest;
}

// The backward's arguments but for the workspace (plan_parameter_grads, then the launcher); every
// tensor contiguous, `grad_input` undefined when not wanted.
template <typename scalar_t>
MlpBwdArgs<scalar_t> bwd_args(const at::Tensor& grad_output, const at::Tensor& input,
                              const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& activations,
                              const at::Tensor& grad_input, int lowest_layer) {
  MlpBwdArgs<scalar_t> args{};
  args.net = network_args<scalar_t>(weights, input.size(1));
  args.input = input.const_data_ptr<scalar_t>();
  for (size_t i = 0; i < activations.size(); ++i) args.activation[i] = activations[i].const_data_ptr<scalar_t>();
  args.grad_output = grad_output.const_data_ptr<scalar_t>();
  args.grad_input = grad_input.defined() ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
  args.lowest_layer = lowest_layer;
  args.rows = input.size(0);
  return args;
}

// Workspace slots (padded [W, W] and [W]) for the wanted parameter gradients only (the numel 0
// ones are not wanted), and the list of gradients the reduction writes. Returns the workspace
// elements per backward block.
template <typename scalar_t, int W>
int64_t plan_parameter_grads(MlpBwdArgs<scalar_t>& args, MlpGradReduceArgs<scalar_t>& reduce,
                             const std::vector<at::Tensor>& weight_grads, const std::vector<at::Tensor>& bias_grads) {
  int64_t stride = 0;
  // `grad` ([rows, cols], or a bias as one row) gets the next `size` elements of a block's
  // slice; returns its slot.
  const auto add = [&](const at::Tensor& grad, int64_t cols, int64_t size) {
    const auto slot = static_cast<int32_t>(stride);
    reduce.dst[reduce.count] = grad.mutable_data_ptr<scalar_t>();
    reduce.slot[reduce.count] = slot;
    reduce.cols[reduce.count] = static_cast<int32_t>(cols);
    reduce.begin[reduce.count + 1] = reduce.begin[reduce.count] + grad.numel();
    ++reduce.count;
    stride += size;
    return slot;
  };
  for (int i = 0; i < args.net.layers; ++i) {
    args.weight_slot[i] = args.bias_slot[i] = -1;
    if (weight_grads[i].numel() > 0) args.weight_slot[i] = add(weight_grads[i], weight_grads[i].size(1), W * W);
    if (static_cast<size_t>(i) < bias_grads.size() && bias_grads[i].numel() > 0) {
      args.bias_slot[i] = add(bias_grads[i], bias_grads[i].numel(), W);
    }
  }
  return stride;
}

// ---------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------

// Per kernel instantiation (each launcher owns one), per device: the one-time launch setup.
struct KernelLaunchSetup {
  std::once_flag done[C10_COMPILE_TIME_MAX_GPUS];
  int blocks_per_sm[C10_COMPILE_TIME_MAX_GPUS] = {};
};

// Checks the current device can run `kernel` with `smem_bytes` of dynamic shared memory, opts
// in above the default 48 KB, and returns how many blocks of it an SM holds (all once per device).
int prepare_launch(const void* kernel, size_t smem_bytes, bool tensor_cores, const char* op,
                   KernelLaunchSetup& setup) {
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(!tensor_cores || props->major >= 8, op,
              ": the fused MLP kernels for this dtype use tensor cores of compute capability 8.0 or newer, "
              "but ", props->name, " is ", props->major, ".", props->minor, "; FusedMLP runs the network layer by layer");
  TORCH_CHECK(smem_bytes <= props->sharedMemPerBlockOptin, op, ": the fused MLP kernel for this dtype and width needs ",
              smem_bytes, " bytes of shared memory per block, but ", props->name, " allows ",
              props->sharedMemPerBlockOptin, "; FusedMLP runs the network layer by layer");
  const c10::DeviceIndex device = c10::cuda::current_device();
  std::call_once(setup.done[device], [&] {
    if (smem_bytes > 48 * 1024) {
      C10_CUDA_CHECK(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes)));
    }
    int blocks = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, smem_bytes));
    TORCH_CHECK(blocks > 0, op, ": the fused MLP kernel does not fit an SM of ", props->name,
                "; FusedMLP runs the network layer by layer");
    setup.blocks_per_sm[device] = blocks;
  });
  return setup.blocks_per_sm[device];
}

template <typename scalar_t, int W>
void launch_mlp_fwd(const MlpFwdArgs<scalar_t>& args) {
  using Tile = MlpTile<scalar_t, W>;
  static KernelLaunchSetup setup;
  const int64_t blocks = ceil_div(args.rows, Tile::kRows);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "mlp_fwd: a batch of ", args.rows,
              " rows needs too many thread blocks (", blocks, ")");
  const auto kernel = mlp_fwd_kernel<scalar_t, W>;
  prepare_launch(reinterpret_cast<const void*>(kernel), Tile::kFwdSmem, Tile::kTensorCores, "mlp_fwd", setup);
  kernel<<<static_cast<unsigned int>(blocks), kThreads, Tile::kFwdSmem, at::cuda::getCurrentCUDAStream()>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::vector<at::Tensor> contiguous_all(at::TensorList tensors) {
  std::vector<at::Tensor> result;
  result.reserve(tensors.size());
  for (const at::Tensor& t : tensors) result.push_back(t.contiguous());
  return result;
}

std::tuple<at::Tensor, std::vector<at::Tensor>> mlp_fwd_cuda(const at::Tensor& input, at::TensorList weights,
                                                            at::TensorList biases) {
  check_mlp_fwd_args(input, weights, biases);
  TORCH_CHECK(input.is_cuda(), "mlp_fwd: expected CUDA tensors, got input on ", input.device());
  check_fused_mlp_coverage("mlp_fwd", input, weights);
  const c10::cuda::CUDAGuard device_guard(input.device());

  const size_t layers = weights.size();
  const int64_t M = input.size(0);
  std::vector<at::Tensor> outputs;
  outputs.reserve(layers);
  for (const at::Tensor& w : weights) outputs.push_back(at::empty({M, w.size(0)}, input.options()));
  at::Tensor output = outputs.back();
  std::vector<at::Tensor> activations(outputs.begin(), outputs.end() - 1);
  if (M == 0) return {output, activations};

  const at::Tensor input_c = input.contiguous();
  const std::vector<at::Tensor> weights_c = contiguous_all(weights);
  const std::vector<at::Tensor> biases_c = contiguous_all(biases);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "mlp_fwd_cuda", [&] {
    const MlpFwdArgs<scalar_t> args = fwd_args<scalar_t>(input_c, weights_c, biases_c, outputs);
    dispatch_tile_width(tile_width(input, weights), [&](auto width) { launch_mlp_fwd<scalar_t, decltype(width)::value>(args); });
  });
  return {output, activations};
}

template <typename scalar_t, int W>
void launch_mlp_bwd(MlpBwdArgs<scalar_t>& args, const std::vector<at::Tensor>& weight_grads,
                    const std::vector<at::Tensor>& bias_grads, const at::TensorOptions& options) {
  using Tile = MlpTile<scalar_t, W>;
  using acc_t = typename Tile::acc_t;
  static KernelLaunchSetup setup;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  MlpGradReduceArgs<scalar_t> reduce{};
  const int64_t stride = plan_parameter_grads<scalar_t, W>(args, reduce, weight_grads, bias_grads);

  const auto kernel = mlp_bwd_kernel<scalar_t, W>;
  const int blocks_per_sm =
      prepare_launch(reinterpret_cast<const void*>(kernel), Tile::kBwdSmem, Tile::kTensorCores, "mlp_bwd", setup);
  // The persistent grid: as many blocks as fit the GPU at once, at most kMaxBwdBlocksPerSm per
  // SM (bounding the workspace) and one per tile. It depends only on the batch size and the
  // device, so the summation order of the weight and bias gradients does too.
  const int64_t tiles = ceil_div(args.rows, Tile::kRows);
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = std::min(tiles, sms * std::min<int64_t>(blocks_per_sm, kMaxBwdBlocksPerSm));
  at::Tensor workspace;
  if (stride > 0) {
    workspace = at::empty({blocks * stride}, options.dtype(c10::CppTypeToScalarType<acc_t>::value));
    args.workspace = workspace.mutable_data_ptr<acc_t>();
    args.workspace_stride = stride;
  }
  kernel<<<static_cast<unsigned int>(blocks), kThreads, Tile::kBwdSmem, stream>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (reduce.count == 0) return;

  reduce.workspace = args.workspace;
  reduce.workspace_stride = stride;
  reduce.partials = static_cast<int32_t>(blocks);
  reduce.tile_width = W;
  const int64_t total = reduce.begin[reduce.count];
  mlp_grad_reduce_kernel<scalar_t><<<static_cast<unsigned int>(ceil_div(total, kReduceCols)),
                                     dim3(kReduceCols, kReduceGroups), 0, stream>>>(reduce);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Gradients of the layers whose flag is false come back as empty (numel 0) tensors, as does
// grad_input when input_grad is false.
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_bwd_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, at::TensorList weights, at::TensorList activations,
    bool input_grad, c10::List<bool> weight_grads, c10::List<bool> bias_grads) {
  const std::vector<bool> weight_mask(weight_grads.begin(), weight_grads.end());
  const std::vector<bool> bias_mask(bias_grads.begin(), bias_grads.end());
  check_mlp_bwd_args(grad_output, input, weights, activations, weight_mask, bias_mask);
  TORCH_CHECK(input.is_cuda(), "mlp_bwd: expected CUDA tensors, got input on ", input.device());
  check_fused_mlp_coverage("mlp_bwd", input, weights);
  const c10::cuda::CUDAGuard device_guard(input.device());

  const int layers = static_cast<int>(weights.size());
  const int64_t M = input.size(0);
  const auto options = input.options();
  // With no rows the wanted parameter gradients are sums over nothing: zeros.
  const auto param_grad = [&](bool wanted, at::IntArrayRef shape) {
    if (!wanted) return at::empty({0}, options);
    return M == 0 ? at::zeros(shape, options) : at::empty(shape, options);
  };
  at::Tensor grad_input = input_grad ? at::empty({M, input.size(1)}, options) : at::empty({0}, options);
  std::vector<at::Tensor> grad_weights, grad_biases;
  for (int i = 0; i < layers; ++i) grad_weights.push_back(param_grad(weight_mask[i], weights[i].sizes()));
  for (size_t i = 0; i < bias_mask.size(); ++i) grad_biases.push_back(param_grad(bias_mask[i], {weights[i].size(0)}));
  const int lowest_layer = lowest_wanted_layer(input_grad, weight_mask, bias_mask);
  if (M == 0 || lowest_layer == layers) return {grad_input, grad_weights, grad_biases};

  const at::Tensor grad_output_c = grad_output.contiguous();
  const at::Tensor input_c = input.contiguous();
  const std::vector<at::Tensor> weights_c = contiguous_all(weights);
  const std::vector<at::Tensor> activations_c = contiguous_all(activations);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "mlp_bwd_cuda", [&] {
    MlpBwdArgs<scalar_t> args = bwd_args<scalar_t>(grad_output_c, input_c, weights_c, activations_c,
                                                   input_grad ? grad_input : at::Tensor(), lowest_layer);
    dispatch_tile_width(tile_width(input, weights), [&](auto width) {
      launch_mlp_bwd<scalar_t, decltype(width)::value>(args, grad_weights, grad_biases, options);
    });
  });
  return {grad_input, grad_weights, grad_biases};
}

}  // namespace
}  // namespace fusedmlp

TORCH_LIBRARY_IMPL(fusedmlp, CUDA, m) {
  m.impl("mlp_fwd", &fusedmlp::mlp_fwd_cuda);
  m.impl("mlp_bwd", &fusedmlp::mlp_bwd_cuda);
}
