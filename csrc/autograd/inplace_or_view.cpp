// Version counters for the ops that write into their arguments (fused_sgd_'s params and
// momentum buffers, cross_entropy_fwd_inplace's logits, scale_grad_unless_one_'s grad).
//
// Why: autograd notices that a tensor saved for backward was changed in place only through its
// version counter, which ATen's in-place ops bump in their ADInplaceOrView kernels. An op
// defined with TORCH_LIBRARY gets no such kernel (the key falls through), so without this file
// `y = (x @ w).sum(); FusedSGD.step(); y.backward()` silently used the stepped w, where
// torch.optim.SGD raises "one of the variables needed for gradient computation has been
// modified by an inplace operation". The kernel is boxed and reads the schema: every argument
// marked `(a!)`, a tensor or a list of tensors, is bumped once the kernels below have run.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <vector>

namespace fusedmlp {
namespace {

void bump_versions_of_written_arguments(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                                        torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  const size_t first = stack->size() - arguments.size();
  std::vector<at::Tensor> written;
  for (size_t i = 0; i < arguments.size(); ++i) {
    const at::AliasInfo* alias = arguments[i].alias_info();
    if (alias == nullptr || !alias->isWrite()) continue;
    const c10::IValue& value = (*stack)[first + i];
    if (value.isTensor()) {
      written.push_back(value.toTensor());
    } else if (value.isTensorList()) {
      for (const at::Tensor& tensor : value.toTensorList()) written.push_back(tensor);
    }
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  for (const at::Tensor& tensor : written) torch::autograd::impl::bump_version(tensor);
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedmlp, ADInplaceOrView, m) {
  const auto kernel = [] { return torch::CppFunction::makeFromBoxedFunction<&bump_versions_of_written_arguments>(); };
  m.impl("fused_sgd_", kernel());
  m.impl("cross_entropy_fwd_inplace", kernel());
  m.impl("scale_grad_unless_one_", kernel());
}

}  // namespace fusedmlp
