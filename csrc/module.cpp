// Python entry point of fastattr._C. The module is empty on purpose: loading
// the shared library runs the static TORCH_LIBRARY registrations, and Python
// reaches the ops as torch.ops.fastattr.*.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {
      PyModuleDef_HEAD_INIT,
      "_C",                                                  // m_name
      "fastattr kernels; the ops are torch.ops.fastattr.*",  // m_doc
      0,                                                     // m_size: no module state
      nullptr,                                               // m_methods
      nullptr,                                               // m_slots
      nullptr,                                               // m_traverse
      nullptr,                                               // m_clear
      nullptr,                                               // m_free
  };
  return PyModule_Create(&module);
}
