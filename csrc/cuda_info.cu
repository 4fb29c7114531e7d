// Version queries behind introspect._C.cuda_versions(): Python decides from them, before any
// launch, whether this driver can run the kernels (a statically linked CUDA 13 runtime needs a
// driver for CUDA 13, R580 or newer; PyTorch's own CUDA build may need an older one).
#include "cuda_info.h"

#include <cuda_runtime.h>

namespace introspect::cuda {

int runtime_version() { return CUDART_VERSION; }

int driver_version(const char** error) {
  int version = 0;
  const cudaError_t err = cudaDriverGetVersion(&version);
  if (err != cudaSuccess) {
    *error = cudaGetErrorName(err);
    cudaGetLastError();  // leave no sticky error for the next caller
    return 0;
  }
  return version;
}

}  // namespace introspect::cuda
