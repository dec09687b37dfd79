// make_nccl_backend in a build of gantry without CUDA and NCCL (GANTRY_HAVE_CUDA off):
// asking for the NCCL backend is a clear error, not a link failure.

#include "collective/backend.h"

namespace gantry::collective::detail {

std::unique_ptr<Backend> make_nccl_backend(const BackendContext& context) {
  throw CollectiveError("nccl group '" + context.group + "' rank " + std::to_string(context.rank) + " of " +
                        std::to_string(context.world_size) +
                        ": join: gantry was built without CUDA/NCCL, so the NCCL backend is unavailable; rebuild "
                        "gantry where the CUDA toolkit and NCCL are installed (GANTRY_WITH_CUDA=ON), or use "
                        "BackendKind::kSharedMemory or kGloo for host buffers");
}

bool is_cuda_device_pointer(const void*) { return false; }

}  // namespace gantry::collective::detail
