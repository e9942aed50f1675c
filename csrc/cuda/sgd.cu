// Fused SGD step on CUDA: a multi-tensor apply in which one launch updates every tensor of a
// (device, dtype) group.
//
// The launch describes the group with one table of int64 entries:
//
//   [0, T)          param addresses        T = number of tensors
//   [T, 2T)         grad addresses
//   [2T, 3T)        momentum buffer addresses (the params again when momentum == 0)
//   [3T, 4T)        numels
//   [4T, 5T + 1)    each tensor's first CUDA block (kChunk elements per block); the last entry
//                   is the number of blocks. A block finds its tensor by binary search.
//
// Up to kInlineTensors tensors (a network's weights and biases) the table travels in the kernel's
// arguments, by value, as apex and PyTorch pass tensor addresses: a step is one launch and no
// other CUDA call, and a CUDA graph captures the table in the kernel node itself. A larger group
// passes it through device memory (one launch for any number of tensors, where apex and PyTorch
// launch again whenever their fixed-size argument table fills up): written into pinned memory
// and copied asynchronously on the current stream, so the host never waits.
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

#include <fusedmlp/cuda_utils.cuh>
#include <fusedmlp/sgd.h>

namespace fusedmlp {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 4096;  // elements per CUDA block: 16 per thread
// 5 * 32 + 1 entries: 1288 bytes of kernel arguments, inside the 4 KB every driver takes.
constexpr int64_t kInlineTensors = 32;
constexpr int64_t kInlineEntries = 5 * kInlineTensors + 1;

// The table passed by value (kernel arguments; read through the constant cache).
struct InlineTable {
  int64_t entries[kInlineEntries];
  __device__ int64_t operator[](int64_t i) const { return entries[i]; }
};

// The table in device memory.
struct DeviceTable {
  const int64_t* entries;
  __device__ int64_t operator[](int64_t i) const { return entries[i]; }
};

// Device-side scalars: each pointer is null when the corresponding argument is absent.
struct SgdDeviceScalars {
  const double* lr;                  // replaces the host lr when set
  const float* grad_scale;           // grads are divided by it
  const float* found_inf;            // nonzero: skip the step
  const float* first_step_skipped;   // nonzero: this is still the buffers' first step
};

// The tensor that CUDA block `block` updates: the last t whose first block is <= block (a tensor
// with no elements has no blocks, and the next one starts where it would have).
template <typename Table>
__device__ int64_t tensor_of_block(const Table& table, int64_t num_tensors, int64_t block) {
  const int64_t first_block = 4 * num_tensors;
  int64_t low = 0, high = num_tensors - 1;  // table[first_block] == 0 <= block
  while (low < high) {
    const int64_t mid = (low + high + 1) / 2;
    if (table[first_block + mid] <= block) {
      low = mid;
    } else {
      high = mid - 1;
    }
  }
  return low;
}

template <typename scalar_t>
struct SgdChunkFunctor {
  using opmath_t = at::opmath_type<scalar_t>;

  template <typename Table>
  __device__ void operator()(const Table& table, int64_t num_tensors, int64_t block, SgdCoeffs<opmath_t> coeffs,
                             SgdFlags flags, const SgdDeviceScalars& scalars) const {
    if (scalars.found_inf != nullptr && *scalars.found_inf != 0.f) return;
    if (scalars.lr != nullptr) coeffs.neg_lr = static_cast<opmath_t>(-*scalars.lr);
    if (scalars.first_step_skipped != nullptr && *scalars.first_step_skipped != 0.f) flags.first_step = true;
    const opmath_t grad_scale =
        scalars.grad_scale != nullptr ? static_cast<opmath_t>(*scalars.grad_scale) : opmath_t(1);

    const int64_t tensor = tensor_of_block(table, num_tensors, block);
    const int64_t start = (block - table[4 * num_tensors + tensor]) * kChunk;
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

// __grid_constant__: the block indexes the by-value table at run time, so it must be read where
// the arguments live (uniform constant loads, checked in tests/test_build.py), never copied
// into each thread's local memory first, which the compiler may do for an indexed by-value array.
template <typename scalar_t, typename Table>
__global__ void __launch_bounds__(kThreads)
    fused_sgd_kernel(const __grid_constant__ Table table, int64_t num_tensors,
                     SgdCoeffs<at::opmath_type<scalar_t>> coeffs, SgdFlags flags, SgdDeviceScalars scalars) {
  SgdChunkFunctor<scalar_t>{}(table, num_tensors, static_cast<int64_t>(blockIdx.x), coeffs, flags, scalars);
}

// ---------------------------------------------------------------------------
// Launch arguments: host code without CUDA calls (tests/cuda_emulation launches the kernel on
// the CPU with it)
// ---------------------------------------------------------------------------

// The table above for contiguous tensors; `bufs` are the momentum buffers, or the params again
// without momentum.
std::vector<int64_t> sgd_table(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                               const std::vector<at::Tensor>& bufs) {
  const auto count = static_cast<int64_t>(params.size());
  std::vector<int64_t> entries(5 * count + 1);
  entries[4 * count] = 0;
  for (int64_t t = 0; t < count; ++t) {
    entries[t] = reinterpret_cast<int64_t>(params[t].data_ptr());
    entries[count + t] = reinterpret_cast<int64_t>(grads[t].data_ptr());
    entries[2 * count + t] = reinterpret_cast<int64_t>(bufs[t].data_ptr());
    entries[3 * count + t] = params[t].numel();
    entries[4 * count + t + 1] = entries[4 * count + t] + ceil_div(params[t].numel(), kChunk);
  }
  return entries;
}

// The optional scalar arguments in the types the kernel reads them (lr as float64, the others
// as float32), alive as long as this is.
struct SgdScalarTensors {
  at::Tensor lr, grad_scale, found_inf, first_step_skipped;

  SgdScalarTensors(const std::optional<at::Tensor>& lr_tensor, const std::optional<at::Tensor>& grad_scale_tensor,
                   const std::optional<at::Tensor>& found_inf_tensor,
                   const std::optional<at::Tensor>& first_step_skipped_tensor)
      : lr(as(lr_tensor, at::kDouble)),
        grad_scale(as(grad_scale_tensor, at::kFloat)),
        found_inf(as(found_inf_tensor, at::kFloat)),
        first_step_skipped(as(first_step_skipped_tensor, at::kFloat)) {}

  SgdDeviceScalars pointers() const {
    return {pointer<double>(lr), pointer<float>(grad_scale), pointer<float>(found_inf),
            pointer<float>(first_step_skipped)};
  }

 private:
  static at::Tensor as(const std::optional<at::Tensor>& t, at::ScalarType dtype) {
    return t.has_value() ? t->to(dtype).reshape({}) : at::Tensor();
  }
  template <typename T>
  static const T* pointer(const at::Tensor& t) {
    return t.defined() ? t.const_data_ptr<T>() : nullptr;
  }
};

// ---------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------

template <typename scalar_t, typename Table>
void launch_fused_sgd(const Table& table, int64_t num_tensors, int64_t num_blocks,
                      SgdCoeffs<at::opmath_type<scalar_t>> coeffs, SgdFlags flags, SgdDeviceScalars scalars) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  fused_sgd_kernel<scalar_t, Table><<<static_cast<unsigned int>(num_blocks), kThreads, 0, stream>>>(
      table, num_tensors, coeffs, flags, scalars);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  for (int64_t t = 0; t < count; ++t) {
    work_params[t] = params[t].contiguous();
    work_grads[t] = grads[t].contiguous();
    if (has_momentum) work_bufs[t] = momentum_buffers[t].contiguous();
  }
  const std::vector<int64_t> entries = sgd_table(work_params, work_grads, has_momentum ? work_bufs : work_params);
  const int64_t num_blocks = entries[5 * count];
  if (num_blocks > 0) {
    const SgdScalarTensors scalar_tensors(lr_tensor, grad_scale, found_inf, first_step_skipped);
    const SgdDeviceScalars scalars = scalar_tensors.pointers();
    const SgdFlags flags{weight_decay != 0.0, has_momentum, nesterov, maximize, is_first_step};
    at::Tensor device_entries;  // the large-group table, alive until the launch is queued
    if (count > kInlineTensors) {
      at::Tensor host_entries =
          at::empty({5 * count + 1}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
      std::copy(entries.begin(), entries.end(), host_entries.data_ptr<int64_t>());
      // Asynchronous from pinned memory; the caching host allocator keeps the pinned block
      // alive until the copy has run.
      device_entries = host_entries.to(params[0].device(), /*non_blocking=*/true);
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_sgd_cuda", [&] {
      const auto coeffs = SgdCoeffs<at::opmath_type<scalar_t>>::from(weight_decay, momentum, dampening, lr);
      if (count <= kInlineTensors) {
        InlineTable table{};
        std::copy(entries.begin(), entries.end(), table.entries);
        launch_fused_sgd<scalar_t>(table, count, num_blocks, coeffs, flags, scalars);
      } else {
        launch_fused_sgd<scalar_t>(DeviceTable{device_entries.const_data_ptr<int64_t>()}, count, num_blocks,
                                   coeffs, flags, scalars);
      }
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
