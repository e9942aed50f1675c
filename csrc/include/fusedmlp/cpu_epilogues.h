#pragma once
// The passes around the GEMMs that the CPU Linear+ReLU and whole-MLP kernels share: bias and
// ReLU over a GEMM output (forward), and the ReLU mask with the bias-gradient reduction
// (backward), each one pass over contiguous [M, N] data, vectorized and parallel.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

namespace fusedmlp::cpu {

// Rows per parallel task: enough work per task to amortize the thread-pool handoff.
constexpr int64_t kGrainElements = 32768;
// Columns a backward task owns. Each task walks every row for its columns, so the bias
// gradient is summed in a fixed order (deterministic for any thread count).
constexpr int64_t kBiasGradColumns = 256;

// out[m, :] = act(out[m, :] + bias), in place; bias may be null.
template <typename scalar_t>
void add_bias_relu(scalar_t* out, const scalar_t* bias, int64_t M, int64_t N, bool relu) {
  using Vec = at::vec::Vectorized<scalar_t>;
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(N, 1));
  at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
    const Vec zero(scalar_t(0));
    for (int64_t m = begin; m < end; ++m) {
      scalar_t* row = out + m * N;
      int64_t n = 0;
      if constexpr (!at::is_reduced_floating_point_v<scalar_t>) {
        for (; n + Vec::size() <= N; n += Vec::size()) {
          Vec v = Vec::loadu(row + n);
          if (bias != nullptr) v = v + Vec::loadu(bias + n);
          if (relu) v = at::vec::clamp_min(v, zero);  // propagates NaN, as torch.relu does
          v.store(row + n);
        }
      }
      // Half/bfloat16 (and the tail): add in fp32 so the bias add rounds once.
      for (; n < N; ++n) {
        opmath_t v = static_cast<opmath_t>(row[n]);
        if (bias != nullptr) v += static_cast<opmath_t>(bias[n]);
        if (relu && v < opmath_t(0)) v = opmath_t(0);
        row[n] = static_cast<scalar_t>(v);
      }
    }
  });
}

// grad_pre = activation ? grad masked by threshold_backward's rule (activation <= 0 gives 0; a
// NaN activation passes its gradient) : grad, written to grad_pre (may equal grad, may be
// null), and grad_bias = grad_pre.sum(0) (may be null), in one pass over contiguous [M, N].
template <typename scalar_t>
void relu_mask_bias_grad(const scalar_t* grad, const scalar_t* activation, int64_t M, int64_t N, scalar_t* grad_pre,
                         scalar_t* grad_bias) {
  using opmath_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, N, kBiasGradColumns, [&](int64_t begin, int64_t end) {
    // A task may get more than kBiasGradColumns columns (one thread gets them all): walk
    // them in blocks that fit the accumulator.
    for (int64_t block = begin; block < end; block += kBiasGradColumns) {
      const int64_t width = std::min(kBiasGradColumns, end - block);
      opmath_t acc[kBiasGradColumns] = {};
      for (int64_t m = 0; m < M; ++m) {
        const int64_t row = m * N + block;
        int64_t j = 0;
        if constexpr (!at::is_reduced_floating_point_v<scalar_t>) {
          // Same arithmetic as the scalar loop below (each column summed in row order), so
          // the result does not depend on the vector width.
          using Vec = at::vec::Vectorized<scalar_t>;
          const Vec zero(scalar_t(0));
          for (; j + Vec::size() <= width; j += Vec::size()) {
            Vec g = Vec::loadu(grad + row + j);
            if (activation != nullptr) g = Vec::blendv(g, zero, Vec::loadu(activation + row + j) <= zero);
            if (grad_pre != nullptr) g.store(grad_pre + row + j);
            (Vec::loadu(acc + j) + g).store(acc + j);
          }
        }
        for (; j < width; ++j) {
          const scalar_t g =
              (activation != nullptr && activation[row + j] <= scalar_t(0)) ? scalar_t(0) : grad[row + j];
          if (grad_pre != nullptr) grad_pre[row + j] = g;
          acc[j] += static_cast<opmath_t>(g);
        }
      }
      if (grad_bias != nullptr) {
        for (int64_t j = 0; j < width; ++j) grad_bias[block + j] = static_cast<scalar_t>(acc[j]);
      }
    }
  });
}

}  // namespace fusedmlp::cpu
