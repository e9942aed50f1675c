// Every fusedmlp operator schema, in one place. Kernels register against these
// names per device in csrc/cpu/*.cpp and csrc/cuda/*.cu (TORCH_LIBRARY_IMPL), and
// fusedmlp/ops/*.py registers a fake (meta) kernel for each so torch.compile and
// torch.library.opcheck can trace them.
#include <Python.h>
#include <torch/library.h>

// Importing fusedmlp._C loads this shared library, which runs the static
// TORCH_LIBRARY initializers below. It holds no Python functions: every entry
// point is reached as torch.ops.fusedmlp.*.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(fusedmlp, m) {
  // Linear (+ReLU). input [M, K], weight [N, K] (nn.Linear layout), bias [N].
  // Returns act(input @ weight.T + bias), contiguous [M, N]. Backward takes the
  // forward *output*: for ReLU, output > 0 is exactly the mask, so no
  // pre-activation is kept. Gradients whose output_mask entry is false come
  // back as empty (numel 0) tensors.
  m.def("linear_relu_fwd(Tensor input, Tensor weight, Tensor? bias, bool relu) -> Tensor");
  m.def(
      "linear_relu_bwd(Tensor grad_output, Tensor input, Tensor weight, Tensor output, bool relu, "
      "bool[3] output_mask) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");

  // Whole MLP: Linear, ReLU, ..., Linear (ReLU between layers, none after the last), one op
  // per direction. input [M, K0], weights[i] [K(i+1), K(i)], biases either one [K(i+1)] per
  // weight or none at all (bias=False). activations are the hidden layers' ReLU outputs, saved
  // for backward (activation > 0 is the mask). bias_grads has one flag per bias. Gradients
  // not asked for (input_grad / weight_grads[i] / bias_grads[i] false) come back as empty
  // (numel 0) tensors.
  m.def("mlp_fwd(Tensor input, Tensor[] weights, Tensor[] biases) -> (Tensor output, Tensor[] activations)");
  m.def(
      "mlp_bwd(Tensor grad_output, Tensor input, Tensor[] weights, Tensor[] activations, bool input_grad, "
      "bool[] weight_grads, bool[] bias_grads) -> (Tensor grad_input, Tensor[] grad_weights, Tensor[] grad_biases)");
}
