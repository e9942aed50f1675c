#pragma once
// Small pieces the CUDA kernels share (csrc/cuda/*.cu).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace fusedmlp {

template <typename T>
constexpr bool kIsReducedFloat = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// N elements of T moved as one aligned vector (16-byte loads and stores for N * sizeof(T) == 16).
template <typename T, int N>
struct alignas(sizeof(T) * N) AlignedVector {
  T val[N];
};

// CUDA's own types for a reduced-precision ATen scalar type: `type`, the element nvcuda::wmma
// takes, and `pair`, the packed two-element vector of the __hmax2-style intrinsics.
template <typename T>
struct CudaReducedFloat;
template <>
struct CudaReducedFloat<c10::Half> {
  using type = __half;
  using pair = __half2;
};
template <>
struct CudaReducedFloat<c10::BFloat16> {
  using type = __nv_bfloat16;
  using pair = __nv_bfloat162;
};

}  // namespace fusedmlp
