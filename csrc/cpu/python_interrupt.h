// Ctrl-C during a kernel call: the Interrupt (comhe/hyperspherical_energy.h)
// that the CPU glue gives the kernel, and the exception it then raises.
//
// Why Python's own signal check rather than a flag of our own signal handler:
// torch runs an op with the GIL released, and Python's SIGINT handler only
// records the signal; the Python handler (KeyboardInterrupt by default, or
// whatever the user installed: signal.signal, a solver's own handler) runs
// when some thread holding the GIL calls PyErr_CheckSignals. Installing a C
// handler would replace the user's and change what SIGINT means for the
// whole process. So the kernel's thread 0 (the calling thread) takes the GIL
// between tasks, at most every Interrupt::period (0.1 s: ~1 us each, nothing
// against a call that long), and lets Python decide.
#pragma once

#include <Python.h>
#include <pybind11/pybind11.h>

#include "comhe/hyperspherical_energy.h"

namespace comhe {
namespace cpu_glue {

// True where a Python signal handler raised (the exception stays set in this
// thread's Python state for raise_if_interrupted). It takes the GIL only on a
// thread that Python knows (PyGILState_GetThisThreadState): a C++ thread of
// the caller's own gets no Python state made for it, and Python runs signal
// handlers in its main thread only, so there is nothing to ask there.
inline bool python_signal_raised(void*) {
  if (!Py_IsInitialized() || PyGILState_GetThisThreadState() == nullptr) return false;
  const PyGILState_STATE gil = PyGILState_Ensure();
  const bool raised = PyErr_CheckSignals() != 0;
  PyGILState_Release(gil);
  return raised;
}

inline Interrupt python_interrupt() {
  Interrupt interrupt;
  interrupt.requested = &python_signal_raised;
  return interrupt;
}

// After a call the Interrupt stopped: the handler's exception (KeyboardInterrupt
// for the default handler) propagates to the op's Python caller.
inline void raise_if_interrupted(const KernelStatus& status) {
  if (!status.interrupted) return;
  pybind11::gil_scoped_acquire gil;
  throw pybind11::error_already_set();
}

}  // namespace cpu_glue
}  // namespace comhe
