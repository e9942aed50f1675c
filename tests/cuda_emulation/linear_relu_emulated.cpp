// csrc/cuda/linear_relu.cu's GEMMs (CUDA cores for fp32 / fp64, tensor cores for fp16 / bf16, as
// on an sm_80+ GPU), split-K reduction and bias-gradient kernels on the CPU, launched as the CUDA
// host side launches them, with its launch plans (grid, split-K for a GPU of `sms` SMs,
// bias-gradient chunks): small `sms` makes narrow outputs split their reduction at the sizes a
// test can afford.
#include "linear_relu_device.inc"  // csrc/cuda/linear_relu.cu above its "Host side" divider
}  // namespace
}  // namespace fusedmlp

#include <optional>
#include <type_traits>
#include <vector>

namespace emulated {

using namespace fusedmlp;

namespace {

// out[M, N] = epilogue(a[M, K] @ b[K, N]), split along K where the plan says so.
template <typename scalar_t, typename OperandA, typename OperandB>
void gemm(const OperandA& a, const OperandB& b, const scalar_t* bias, int64_t bias_stride, bool relu, scalar_t* out,
          int64_t M, int64_t N, int64_t K, const at::TensorOptions& options, int64_t sms) {
  if (M == 0 || N == 0) return;
  using acc_t = at::opmath_type<scalar_t>;
  // fp16 / bf16 on tensor cores, as on an sm_80+ GPU.
  constexpr bool tensor_cores = kIsReducedFloat<scalar_t>;
  const int64_t tiles = ceil_div(M, kGemmTileM) * ceil_div(N, kGemmTileN);
  const int64_t k_split =
      split_k_length(tiles, K, tensor_cores ? TensorCoreConfig::kBlockK : SimtConfig::kBlockK, sms);
  const unsigned grid_tiles = gemm_grid_size<kGemmTileM, kGemmTileN>(M, N);
  const auto gemm_blocks = [&](auto* dst, const scalar_t* gemm_bias, bool gemm_relu, int64_t splits) {
    using out_t = std::remove_pointer_t<decltype(dst)>;
    const dim3 grid(grid_tiles, static_cast<unsigned>(splits));
    if constexpr (tensor_cores) {
      cuda_emulation::launch(linear_relu_gemm_tensor_core_kernel<scalar_t, out_t, OperandA, OperandB>, grid,
                             dim3(TensorCoreConfig::kThreads), 0, a, b, gemm_bias, bias_stride, gemm_relu, dst, M, N,
                             K, k_split);
    } else {
      cuda_emulation::launch(linear_relu_gemm_kernel<scalar_t, out_t, OperandA, OperandB>, grid,
                             dim3(SimtConfig::kThreads), 0, a, b, gemm_bias, bias_stride, gemm_relu, dst, M, N, K,
                             k_split);
    }
  };
  if (k_split >= K) {
    gemm_blocks(out, bias, relu, 1);
    return;
  }
  const int64_t splits = ceil_div(K, k_split);
  at::Tensor partials = at::empty({splits, M, N}, options.dtype(c10::CppTypeToScalarType<acc_t>::value));
  gemm_blocks(partials.mutable_data_ptr<acc_t>(), nullptr, false, splits);
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(M * N, kSplitKReduceThreads), 65535));
  cuda_emulation::launch(split_k_reduce_kernel<scalar_t, acc_t>, dim3(blocks), dim3(kSplitKReduceThreads), 0,
                         partials.const_data_ptr<acc_t>(), splits, bias, bias_stride, relu, out, M, N);
}

template <typename scalar_t, typename Operand>
void bias_grad(const Operand& grad, int64_t M, int64_t N, at::Tensor& grad_bias) {
  if (N == 0) return;
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows_per_chunk = bias_grad_rows_per_chunk(M);
  const int64_t chunks = std::max<int64_t>(1, ceil_div(M, rows_per_chunk));
  const dim3 block(kBiasGradCols, kBiasGradRows);
  const dim3 grid(static_cast<unsigned>(ceil_div(N, kBiasGradCols)), static_cast<unsigned>(chunks));
  scalar_t* result = grad_bias.mutable_data_ptr<scalar_t>();
  if (chunks == 1) {
    cuda_emulation::launch(relu_bias_grad_kernel<Operand, scalar_t>, grid, block, 0, grad, result, M, N,
                           rows_per_chunk);
    return;
  }
  at::Tensor partials = at::empty({chunks, N}, grad_bias.options().dtype(at::toOpMathType(grad_bias.scalar_type())));
  cuda_emulation::launch(relu_bias_grad_kernel<Operand, acc_t>, grid, block, 0, grad,
                         partials.mutable_data_ptr<acc_t>(), M, N, rows_per_chunk);
  const StridedMatrix<acc_t> partial_view{partials.const_data_ptr<acc_t>(), N, 1};
  cuda_emulation::launch(relu_bias_grad_kernel<StridedMatrix<acc_t>, scalar_t>, dim3(grid.x, 1), block, 0,
                         partial_view, result, chunks, N, chunks);
}

}  // namespace

at::Tensor linear_relu_fwd(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           bool relu, int64_t sms) {
  const int64_t M = input.size(0), K = input.size(1), N = weight.size(0);
  at::Tensor output = at::empty({M, N}, input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "linear_relu_fwd_emulated", [&] {
    const scalar_t* bias_ptr = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
    gemm<scalar_t>(strided_view<scalar_t>(input), strided_view<scalar_t>(weight, /*transpose=*/true), bias_ptr,
                   bias.has_value() ? bias->stride(0) : 0, relu, output.mutable_data_ptr<scalar_t>(), M, N, K,
                   output.options(), sms);
  });
  return output;
}

// [grad_input, grad_weight, grad_bias] as linear_relu_bwd_cuda computes them.
std::vector<at::Tensor> linear_relu_bwd(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& weight, const at::Tensor& output, bool relu, int64_t sms) {
  const int64_t M = input.size(0), K = input.size(1), N = weight.size(0);
  at::Tensor grad_input = at::empty({M, K}, input.options());
  at::Tensor grad_weight = at::empty({N, K}, input.options());
  at::Tensor grad_bias = at::empty({N}, input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "linear_relu_bwd_emulated", [&] {
    const auto run = [&](const auto& grad_pre, const auto& grad_pre_t) {
      gemm<scalar_t>(grad_pre, strided_view<scalar_t>(weight), nullptr, 0, false,
                     grad_input.mutable_data_ptr<scalar_t>(), M, K, N, input.options(), sms);
      gemm<scalar_t>(grad_pre_t, strided_view<scalar_t>(input), nullptr, 0, false,
                     grad_weight.mutable_data_ptr<scalar_t>(), N, K, M, input.options(), sms);
      bias_grad<scalar_t>(grad_pre, M, N, grad_bias);
    };
    const auto g = strided_view<scalar_t>(grad_output);
    const auto g_t = strided_view<scalar_t>(grad_output, /*transpose=*/true);
    if (relu) {
      const auto o = strided_view<scalar_t>(output);
      const auto o_t = strided_view<scalar_t>(output, /*transpose=*/true);
      run(ReluMaskedMatrix<scalar_t>{g, o}, ReluMaskedMatrix<scalar_t>{g_t, o_t});
    } else {
      run(g, g_t);
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace emulated
