// Fused SGD step on CUDA: a multi-tensor apply in which one launch updates every tensor of a
// (device, dtype) group.
//
// Where apex and PyTorch pass tensor addresses in the kernel's argument buffer (and launch
// again whenever a fixed-size table fills up), this passes one int64 table through device
// memory, so any number of tensors takes one launch. The host writes the table into pinned
// memory and copies it asynchronously on the current stream, so the host never waits:
//
//   [0, T)        param addresses        T = number of tensors
//   [T, 2T)       grad addresses
//   [2T, 3T)      momentum buffer addresses (the params again when momentum == 0)
//   [3T, 4T)      numels
//   [4T, 4T+B)    per CUDA block: the tensor it updates         B = number of blocks
//   [4T+B, 4T+2B) per CUDA block: its first element in that tensor (a multiple of kChunk)
//
// The indexing (SgdChunkFunctor: which tensor, which elements) is kept apart from the
// arithmetic, which is fusedmlp::sgd_math from csrc/include/fusedmlp/sgd.h, shared with the
// CPU kernel. fp16/bf16 update in fp32 (at::opmath_type) and round once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include <fusedmlp/sgd.h>

namespace fusedmlp {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 4096;  // elements per CUDA block: 16 per thread

// Device-side scalars: each pointer is null when the corresponding argument is absent.
struct SgdDeviceScalars {
  const double* lr;                  // replaces the host lr when set
  const float* grad_scale;           // grads are divided by it
  const float* found_inf;            // nonzero: skip the step
  const float* first_step_skipped;   // nonzero: this is still the buffers' first step
};

template <typename scalar_t>
struct SgdChunkFunctor {
  using opmath_t = at::opmath_type<scalar_t>;

  __device__ void operator()(const int64_t* table, int64_t num_tensors, int64_t num_blocks, int64_t block,
                             SgdCoeffs<opmath_t> coeffs, SgdFlags flags, const SgdDeviceScalars& scalars) const {
    if (scalars.found_inf != nullptr && *scalars.found_inf != 0.f) return;
    if (scalars.lr != nullptr) coeffs.neg_lr = static_cast<opmath_t>(-*scalars.lr);
    if (scalars.first_step_skipped != nullptr && *scalars.first_step_skipped != 0.f) flags.first_step = true;
    const opmath_t grad_scale =
        scalars.grad_scale != nullptr ? static_cast<opmath_t>(*scalars.grad_scale) : opmath_t(1);

    const int64_t tensor = table[4 * num_tensors + block];
    const int64_t start = table[4 * num_tensors + num_blocks + block];
    const int64_t numel = table[3 * num_tensors + tensor];
    auto* param = reinterpret_cast<scalar_t*>(table[tensor]);
    const auto* grad = reinterpret_cast<const scalar_t*>(table[num_tensors + tensor]);
    auto* buf = reinterpret_cast<scalar_t*>(table[2 * num_tensors + tensor]);

    const int64_t end = start + kChunk < numel ? start + kChunk : numel;
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
      opmath_t p = static_cast<opmath_t>(param[i]);
      opmath_t g = static_cast<opmath_t>(grad[i]);
      if (scalars.grad_scale != nullptr) g = g / grad_scale;
      opmath_t b = (flags.has_momentum && !flags.first_step) ? static_cast<opmath_t>(buf[i]) : opmath_t(0);
      sgd_math(p, g, b, coeffs, flags, ScalarMadd{});
      param[i] = static_cast<scalar_t>(p);
      if (flags.has_momentum) buf[i] = static_cast<scalar_t>(b);
    }
  }
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    fused_sgd_kernel(const int64_t* table, int64_t num_tensors, int64_t num_blocks,
                     SgdCoeffs<at::opmath_type<scalar_t>> coeffs, SgdFlags flags, SgdDeviceScalars scalars) {
  SgdChunkFunctor<scalar_t>{}(table, num_tensors, num_blocks, static_cast<int64_t>(blockIdx.x), coeffs, flags,
                              scalars);
}

void fused_sgd_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                    double weight_decay, double momentum, const std::optional<at::Tensor>& lr_tensor, double lr,
                    double dampening, bool nesterov, bool maximize, bool is_first_step,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                    const std::optional<at::Tensor>& first_step_skipped) {
  check_fused_sgd_args(params, grads, momentum_buffers, momentum, lr_tensor, grad_scale, found_inf,
                       first_step_skipped);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard device_guard(params[0].device());
  const bool has_momentum = momentum != 0.0;

  // The kernel walks contiguous memory; strided tensors go through contiguous copies.
  const int64_t count = static_cast<int64_t>(params.size());
  std::vector<at::Tensor> work_params(count), work_grads(count), work_bufs(has_momentum ? count : 0);
  std::vector<int64_t> block_tensor, block_start;
  for (int64_t t = 0; t < count; ++t) {
    work_params[t] = params[t].contiguous();
    work_grads[t] = grads[t].contiguous();
    if (has_momentum) work_bufs[t] = momentum_buffers[t].contiguous();
    for (int64_t begin = 0; begin < params[t].numel(); begin += kChunk) {
      block_tensor.push_back(t);
      block_start.push_back(begin);
    }
  }
  const int64_t num_blocks = static_cast<int64_t>(block_tensor.size());
  if (num_blocks > 0) {
    at::Tensor host_table =
        at::empty({4 * count + 2 * num_blocks}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    int64_t* h = host_table.data_ptr<int64_t>();
    for (int64_t t = 0; t < count; ++t) {
      h[t] = reinterpret_cast<int64_t>(work_params[t].data_ptr());
      h[count + t] = reinterpret_cast<int64_t>(work_grads[t].data_ptr());
      h[2 * count + t] = reinterpret_cast<int64_t>(has_momentum ? work_bufs[t].data_ptr() : work_params[t].data_ptr());
      h[3 * count + t] = params[t].numel();
    }
    std::copy(block_tensor.begin(), block_tensor.end(), h + 4 * count);
    std::copy(block_start.begin(), block_start.end(), h + 4 * count + num_blocks);
    // Asynchronous from pinned memory; the caching host allocator keeps the pinned block
    // alive until the copy has run.
    const at::Tensor table = host_table.to(params[0].device(), /*non_blocking=*/true);

    // Scalars read on the device, in the types the kernel reads them.
    const at::Tensor lr_device = lr_tensor.has_value() ? lr_tensor->to(at::kDouble).reshape({}) : at::Tensor();
    auto as_float = [](const std::optional<at::Tensor>& t) {
      return t.has_value() ? t->to(at::kFloat).reshape({}) : at::Tensor();
    };
    const at::Tensor grad_scale_f = as_float(grad_scale), found_inf_f = as_float(found_inf),
                     first_step_skipped_f = as_float(first_step_skipped);
    const SgdDeviceScalars scalars{
        lr_device.defined() ? lr_device.const_data_ptr<double>() : nullptr,
        grad_scale_f.defined() ? grad_scale_f.const_data_ptr<float>() : nullptr,
        found_inf_f.defined() ? found_inf_f.const_data_ptr<float>() : nullptr,
        first_step_skipped_f.defined() ? first_step_skipped_f.const_data_ptr<float>() : nullptr,
    };
    const SgdFlags flags{weight_decay != 0.0, has_momentum, nesterov, maximize, is_first_step};
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_sgd_cuda", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      const SgdCoeffs<opmath_t> coeffs{static_cast<opmath_t>(weight_decay), static_cast<opmath_t>(momentum),
                                       static_cast<opmath_t>(1.0 - dampening), static_cast<opmath_t>(-lr),
                                       opmath_t(-1)};
      fused_sgd_kernel<scalar_t><<<static_cast<unsigned int>(num_blocks), kThreads, 0, stream>>>(
          table.const_data_ptr<int64_t>(), count, num_blocks, coeffs, flags, scalars);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  for (int64_t t = 0; t < count; ++t) {
    if (!work_params[t].is_same(params[t])) params[t].copy_(work_params[t]);
    if (has_momentum && !work_bufs[t].is_same(momentum_buffers[t])) momentum_buffers[t].copy_(work_bufs[t]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedmlp, CUDA, m) { m.impl("fused_sgd_", &fused_sgd_cuda); }

}  // namespace fusedmlp
