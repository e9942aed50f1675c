#pragma once
// CUDA's device-side vocabulary for host C++, so that the kernels of csrc/cuda/*.cu (those
// without warp shuffles) run on a CPU, unchanged, for tests on machines without a GPU.
//
// A thread block runs as one std::thread per CUDA thread; __syncthreads() is a std::barrier of
// the block, which a thread leaves for good when it returns (as an exited CUDA thread no longer
// counts at a barrier), and __syncwarp() a barrier of its warp. Blocks run one after another,
// so `__shared__` arrays (made `static` here) and the dynamic shared memory are one buffer
// reused by each block in turn, holding whatever the previous block left, as uninitialised
// shared memory may. nvcuda::wmma is emulated for 16x16x16 tiles, and PTX's TF32 mma.sync
// m16n8k8 through its documented fragment layout (below); warp shuffles are not.
//
// Include this before the device part of a .cu file (tests/test_cuda_emulated.py cuts each
// file at its "Host side" divider and compiles the part above it with g++).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>  // dim3, uint3, and the CUDA qualifiers as host-compiler attributes

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <type_traits>
#include <vector>

// Bit casts of the CUDA math API.
inline float __uint_as_float(unsigned x) {
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned x;
  std::memcpy(&x, &f, sizeof x);
  return x;
}

namespace cuda_emulation {

// What a lane puts on the table for a warp-wide instruction (mma.sync): its operand registers.
struct LaneOperands {
  uint32_t a[4];
  uint32_t b[2];
};

struct BlockContext {
  std::barrier<>* barrier = nullptr;       // the block's (__syncthreads)
  std::barrier<>* warp_barrier = nullptr;  // the thread's warp's (__syncwarp)
  unsigned lane = 0;
  unsigned char* dynamic_shared = nullptr;
  LaneOperands* warp_operands = nullptr;  // the thread's warp's, one per lane
};

inline thread_local uint3 thread_idx;
inline thread_local uint3 block_idx;
inline thread_local dim3 block_dim;
inline thread_local dim3 grid_dim;
inline thread_local BlockContext block;

// The largest dynamic shared memory an H100 / H200 block may opt in to.
constexpr size_t kMaxDynamicShared = 227 * 1024;

// kernel(args...) over `grid` x `threads` with `shared_bytes` of dynamic shared memory per block.
// One std::thread per CUDA thread of a block, created once per launch; the blocks run one after
// another, each with a fresh barrier made when every thread is done with the previous block.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 threads, size_t shared_bytes, const Args&... args) {
  if (shared_bytes > kMaxDynamicShared) {
    std::fprintf(stderr, "cuda_emulation: %zu bytes of dynamic shared memory requested\n", shared_bytes);
    std::abort();
  }
  alignas(128) static unsigned char dynamic_shared[kMaxDynamicShared];
  const unsigned count = threads.x * threads.y * threads.z;
  const unsigned warps = (count + 31) / 32;
  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  std::optional<std::barrier<>> block_barrier;
  std::vector<std::unique_ptr<std::barrier<>>> warp_barriers(warps);
  std::vector<LaneOperands> lane_operands(32 * warps);
  std::barrier<std::function<void()>> next_block(count, [&]() noexcept {
    block_barrier.emplace(count);
    for (unsigned w = 0; w < warps; ++w) {
      warp_barriers[w] = std::make_unique<std::barrier<>>(std::min(32u, count - 32 * w));
    }
  });
  std::vector<std::thread> workers;
  workers.reserve(count);
  for (unsigned t = 0; t < count; ++t) {
    workers.emplace_back([&, t] {
      thread_idx = {t % threads.x, (t / threads.x) % threads.y, t / (threads.x * threads.y)};
      block_dim = threads;
      grid_dim = grid;
      for (uint64_t b = 0; b < blocks; ++b) {
        next_block.arrive_and_wait();
        block_idx = {static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                     static_cast<unsigned>(b / (static_cast<uint64_t>(grid.x) * grid.y))};
        block = {&*block_barrier, warp_barriers[t / 32].get(), t % 32, dynamic_shared, &lane_operands[32 * (t / 32)]};
        kernel(args...);
        block.barrier->arrive_and_drop();
        block.warp_barrier->arrive_and_drop();
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
}

// PTX mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, d += A @ B, with every lane of the
// warp taking part (as the instruction requires). Lane l = 4 g + t holds a[r] = A(g + 8 (r % 2),
// t + 4 (r / 2)), b[r] = B(t + 4 r, g) and d[r] = D(g + 8 (r / 2), 2 t + r % 2) (the PTX ISA's
// fragment layouts): each lane puts its operands on its warp's table, and computes its own four
// results from everyone's. A TF32 operand is its fp32 word without the 13 low mantissa bits;
// products of TF32 values are exact in fp32, and each result adds them in order of k in fp32.
inline void mma_tf32_m16n8k8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  LaneOperands* table = block.warp_operands;
  const unsigned lane = block.lane, g = lane / 4, t = lane % 4;
  std::copy(a, a + 4, table[lane].a);
  std::copy(b, b + 2, table[lane].b);
  block.warp_barrier->arrive_and_wait();
  const auto tf32 = [](uint32_t bits) { return __uint_as_float(bits & 0xffffe000u); };
  for (unsigned r = 0; r < 4; ++r) {
    const unsigned row = g + 8 * (r / 2), col = 2 * t + r % 2;
    float sum = d[r];
    for (unsigned k = 0; k < 8; ++k) {
      const float a_value = tf32(table[4 * (row % 8) + k % 4].a[row / 8 + 2 * (k / 4)]);
      const float b_value = tf32(table[4 * col + k % 4].b[k / 4]);
      sum += a_value * b_value;
    }
    d[r] = sum;
  }
  block.warp_barrier->arrive_and_wait();  // everyone has read the table before it is reused
}

}  // namespace cuda_emulation

// csrc/cuda/*.cu call the emulation where they would issue a warp-wide PTX instruction.
#define FUSEDMLP_CUDA_EMULATION 1

#define threadIdx (::cuda_emulation::thread_idx)
#define blockIdx (::cuda_emulation::block_idx)
#define blockDim (::cuda_emulation::block_dim)
#define gridDim (::cuda_emulation::grid_dim)
#define __syncthreads() (::cuda_emulation::block.barrier->arrive_and_wait())
#define __trap() ::std::abort()
#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)
#undef __grid_constant__
#define __grid_constant__
// The .cu's `extern __shared__ ... name[]` becomes `FUSEDMLP_EMULATED_DYNAMIC_SHARED(name)`
// when it is cut out for emulation.
#define FUSEDMLP_EMULATED_DYNAMIC_SHARED(name) unsigned char* name = ::cuda_emulation::block.dynamic_shared

#define __syncwarp(...) (::cuda_emulation::block.warp_barrier->arrive_and_wait())

// nvcuda::wmma for 16x16x16 tiles. The hardware spreads a fragment over the warp's registers in
// a layout it does not document, and the kernels only move fragments through this API, so here
// every lane holds the whole tile: every lane loads and multiplies its own copy (fp32 products of
// fp16 / bf16 values are exact, summed in order of k in fp32), and lane 0 alone stores, so a
// kernel that reads a stored tile before __syncwarp() reads stale data here as it may on a GPU.
namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation has 16x16x16 tiles only");
  float v[16][16];
};

inline float to_float(float x) { return x; }
inline float to_float(__half x) { return __half2float(x); }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename Use, typename T, typename Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float value) {
  for (auto& row : f.v)
    for (float& x : row) x = value;
}

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.v[r][c] = to_float(std::is_same_v<Layout, col_major> ? p[c * ldm + r] : p[r * ldm + c]);
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm,
                             layout_t layout) {
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.v[r][c] = layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  if (::cuda_emulation::block.lane != 0) return;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.v[r][c];
}

template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  fragment<accumulator, 16, 16, 16, float> result;
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      float sum = c.v[i][j];
      for (int k = 0; k < 16; ++k) sum += a.v[i][k] * b.v[k][j];
      result.v[i][j] = sum;
    }
  }
  d = result;
}
}  // namespace nvcuda::wmma
