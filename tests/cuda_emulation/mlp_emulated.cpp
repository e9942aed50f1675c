// csrc/cuda/mlp.cu's kernels on the CPU (fp32 / fp64 on CUDA cores, fp16 / bf16 through the
// emulated wmma; fp32 through the emulated mma.sync in the FUSEDMLP_MLP_TF32X3 build), launched
// as the CUDA host side launches them, with its own launch-argument code: tile width, kernel
// arguments, one forward block per tile, a persistent backward grid (its size chosen by the
// caller here, at most one block per tile) and the fixed-order gradient reduction.
#include "mlp_device.inc"  // csrc/cuda/mlp.cu above its "Host side" divider (written by the test)
}  // namespace
}  // namespace fusedmlp

#include <algorithm>
#include <vector>

namespace emulated {

using namespace fusedmlp;

namespace {

void check_inputs(const at::Tensor& input, const std::vector<at::Tensor>& weights) {
  TORCH_CHECK(input.is_contiguous(), "contiguous tensors only");
  for (const at::Tensor& w : weights) TORCH_CHECK(w.is_contiguous(), "contiguous tensors only");
}

}  // namespace

std::vector<at::Tensor> mlp_fwd(const at::Tensor& input, const std::vector<at::Tensor>& weights,
                                const std::vector<at::Tensor>& biases) {
  check_inputs(input, weights);
  std::vector<at::Tensor> outputs;
  for (const at::Tensor& w : weights) outputs.push_back(at::empty({input.size(0), w.size(0)}, input.options()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "mlp_fwd_emulated", [&] {
    const MlpFwdArgs<scalar_t> args = fwd_args<scalar_t>(input, weights, biases, outputs);
    dispatch_tile_width(tile_width(input, weights), [&](auto width) {
      constexpr int W = decltype(width)::value;
      using Tile = MlpTile<scalar_t, W>;
      const auto blocks = static_cast<unsigned>(ceil_div(args.rows, Tile::kRows));
      cuda_emulation::launch(mlp_fwd_kernel<scalar_t, W>, dim3(blocks), dim3(kThreads), Tile::kFwdSmem, args);
    });
  });
  return outputs;  // the hidden activations, then the output
}

// [grad_input, weight gradients..., bias gradients...] from a persistent grid of `blocks` blocks
// (each walks tiles b, b + blocks, ...); an unwanted gradient comes back empty (numel 0).
std::vector<at::Tensor> mlp_bwd(const at::Tensor& grad_output, const at::Tensor& input,
                                const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& activations,
                                bool input_grad, const std::vector<bool>& weight_mask,
                                const std::vector<bool>& bias_mask, int64_t blocks) {
  check_inputs(input, weights);
  const auto options = input.options();
  std::vector<at::Tensor> grad_weights, grad_biases;
  for (size_t i = 0; i < weights.size(); ++i) {
    grad_weights.push_back(weight_mask[i] ? at::empty_like(weights[i]) : at::empty({0}, options));
  }
  for (size_t i = 0; i < bias_mask.size(); ++i) {
    grad_biases.push_back(bias_mask[i] ? at::empty({weights[i].size(0)}, options) : at::empty({0}, options));
  }
  const at::Tensor grad_input = input_grad ? at::empty_like(input) : at::empty({0}, options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "mlp_bwd_emulated", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    MlpBwdArgs<scalar_t> args = bwd_args<scalar_t>(grad_output, input, weights, activations,
                                                   input_grad ? grad_input : at::Tensor(),
                                                   lowest_wanted_layer(input_grad, weight_mask, bias_mask));
    dispatch_tile_width(tile_width(input, weights), [&](auto width) {
      constexpr int W = decltype(width)::value;
      using Tile = MlpTile<scalar_t, W>;
      MlpGradReduceArgs<scalar_t> reduce{};
      const int64_t stride = plan_parameter_grads<scalar_t, W>(args, reduce, grad_weights, grad_biases);
      // At most one block per tile, as the CUDA host side sizes the grid: a block with no tile
      // would leave its partials unwritten.
      blocks = std::min(blocks, ceil_div(args.rows, Tile::kRows));
      const at::Tensor workspace = at::empty({std::max<int64_t>(blocks * stride, 1)},
                                             options.dtype(c10::CppTypeToScalarType<acc_t>::value));
      args.workspace = workspace.mutable_data_ptr<acc_t>();
      args.workspace_stride = stride;
      cuda_emulation::launch(mlp_bwd_kernel<scalar_t, W>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                             Tile::kBwdSmem, args);
      if (reduce.count == 0) return;
      reduce.workspace = args.workspace;
      reduce.workspace_stride = stride;
      reduce.partials = static_cast<int32_t>(blocks);
      reduce.tile_width = W;
      const auto reduce_blocks = static_cast<unsigned>(ceil_div(reduce.begin[reduce.count], kReduceCols));
      cuda_emulation::launch(mlp_grad_reduce_kernel<scalar_t>, dim3(reduce_blocks), dim3(kReduceCols, kReduceGroups),
                             0, reduce);
    });
  });
  std::vector<at::Tensor> grads{grad_input};
  grads.insert(grads.end(), grad_weights.begin(), grad_weights.end());
  grads.insert(grads.end(), grad_biases.begin(), grad_biases.end());
  return grads;
}

}  // namespace emulated
