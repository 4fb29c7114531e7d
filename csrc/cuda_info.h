// What the CUDA part of introspect._C was built against and what the machine's driver supports.
// Framework-free and free of CUDA types, so it compiles as plain C++.
#pragma once

namespace introspect::cuda {

// CUDA runtime version compiled in (CUDART_VERSION, e.g. 13000 for 13.0). The runtime is linked
// statically, so this is the version every launch needs the driver to support.
int runtime_version();

// CUDA version the installed driver supports (cudaDriverGetVersion, e.g. 12040 for 12.4), or 0
// when no driver is installed. Creates no context and touches no device. When the query itself
// fails, returns 0 and sets *error to the CUDA error name (left untouched otherwise).
int driver_version(const char** error);

}  // namespace introspect::cuda
