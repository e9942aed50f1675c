#pragma once
// CUDA's device-side vocabulary for host C++, so that the CUDA-core (fp32 / fp64) kernels of
// csrc/cuda/*.cu run on a CPU, unchanged, for tests on machines without a GPU.
//
// A thread block runs as one std::thread per CUDA thread; __syncthreads() is a std::barrier of
// the block, which a thread leaves for good when it returns (as an exited CUDA thread no longer
// counts at a barrier). Blocks run one after another, so `__shared__` arrays (made `static`
// here) and the dynamic shared memory are one buffer reused by each block in turn, holding
// whatever the previous block left, as uninitialised shared memory may. Warp-level operations
// (shuffles, wmma) are not emulated: the tensor-core code parses against declarations only and
// aborts if a test ever reaches it.
//
// Include this before the device part of a .cu file (tests/test_cuda_emulated.py cuts each
// file at its "Host side" divider and compiles the part above it with g++).
#include <cuda_runtime_api.h>  // dim3, uint3, and the CUDA qualifiers as host-compiler attributes

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

namespace cuda_emulation {

struct BlockContext {
  std::barrier<>* barrier = nullptr;
  unsigned char* dynamic_shared = nullptr;
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
  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  std::optional<std::barrier<>> block_barrier;
  std::barrier<std::function<void()>> next_block(count, [&]() noexcept { block_barrier.emplace(count); });
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
        block = {&*block_barrier, dynamic_shared};
        kernel(args...);
        block_barrier->arrive_and_drop();
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
}

}  // namespace cuda_emulation

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

// Declarations only, for the tensor-core code to parse; nothing here may run.
namespace nvcuda::wmma {
struct matrix_a;
struct matrix_b;
struct accumulator;
struct row_major;
struct col_major;
enum layout_t { mem_row_major, mem_col_major };
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int num_elements = 1;
  T x[1];
};
template <typename... A>
void fill_fragment(A&&...);
template <typename... A>
void load_matrix_sync(A&&...);
template <typename... A>
void store_matrix_sync(A&&...);
template <typename... A>
void mma_sync(A&&...);
}  // namespace nvcuda::wmma
void __syncwarp(unsigned mask = 0xffffffffu);
