#pragma once
// Small pieces the CUDA kernels share (csrc/cuda/linear_relu.cu, mlp.cu).
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

// The CUDA type nvcuda::wmma takes for a reduced-precision ATen scalar type.
template <typename T>
struct WmmaElement;
template <>
struct WmmaElement<c10::Half> {
  using type = __half;
};
template <>
struct WmmaElement<c10::BFloat16> {
  using type = __nv_bfloat16;
};

}  // namespace fusedmlp
