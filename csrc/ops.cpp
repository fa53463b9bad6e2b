// The op's schema, shared by every backend (TORCH_LIBRARY_IMPL blocks live in
// cpu/ and cuda/), and an empty Python module so that the ahead-of-time
// build can be imported as comhe_kernels._C, which registers the ops.
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}

TORCH_LIBRARY(comhe, m) {
  // Energy sums of B point sets x (B, N, k) and, if compute_grad, their
  // gradient d energy[b] / d x[b] (else an empty tensor). kind is "chordal"
  // or "angular", s >= 0 the exponent (0: log). energy is float64.
  m.def(
      "hyperspherical_energy(Tensor x, str kind, float s, bool half_space, float eps, float delta, "
      "bool compute_grad) -> (Tensor energy, Tensor grad)");
}
