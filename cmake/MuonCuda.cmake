# The optional CUDA backend: the INTERFACE target muon::cuda (header-only; the
# kernels live in .cuh headers that the user's .cu translation unit compiles).
#
# Included from the top-level CMakeLists.txt when MUON_ENABLE_CUDA is ON.
#
# Architectures: unless the user chose CMAKE_CUDA_ARCHITECTURES, the project's
# programs are built for MUON_CUDA_ARCHITECTURES: by default machine code for
# sm_80 (A100), sm_86 (RTX 30xx, A10), sm_89 (L4, RTX 40xx) and sm_90 (H100,
# H200) plus compute_90 PTX for newer GPUs; "native" builds for the GPUs of
# the building machine only (fastest to compile; scripts/gpu_check.sh uses it).
#
# Runtime: the CUDA runtime is the one CMake's CUDA language links into the
# consumer's .cu targets (CUDA_RUNTIME_LIBRARY, static by default); muon::cuda
# adds cuBLAS only, so no program ends up with two runtimes.

set(MUON_CUDA_ARCHITECTURES "80-real;86-real;89-real;90-real;90-virtual" CACHE STRING
    "CUDA architectures of the project's programs when CMAKE_CUDA_ARCHITECTURES is not set (or: native)")
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES "${MUON_CUDA_ARCHITECTURES}")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

add_library(muon_cuda INTERFACE)
add_library(muon::cuda ALIAS muon_cuda)
set_target_properties(muon_cuda PROPERTIES EXPORT_NAME cuda)
target_link_libraries(muon_cuda INTERFACE muon::muon CUDA::cublas)
target_compile_features(muon_cuda INTERFACE cuda_std_17)
target_compile_definitions(muon_cuda INTERFACE MUON_HAS_CUDA=1)

# Warning flags for the project's own .cu programs: host-side warnings through
# -Xcompiler, plus nvcc's own -Werror for cross-execution-space calls etc.
if(NOT TARGET muon_cuda_project_warnings)
  add_library(muon_cuda_project_warnings INTERFACE)
  target_compile_options(muon_cuda_project_warnings INTERFACE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>
    $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${MUON_WARNINGS_AS_ERRORS}>>:-Werror=all-warnings>)
endif()

# NCCL (shipped with the CUDA toolkit here; or a separate install): the
# target muon::nccl for distributed/nccl.hpp, when found.
find_path(MUON_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
find_library(MUON_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
if(MUON_NCCL_INCLUDE_DIR AND MUON_NCCL_LIBRARY)
  add_library(muon_nccl INTERFACE)
  add_library(muon::nccl ALIAS muon_nccl)
  target_include_directories(muon_nccl SYSTEM INTERFACE ${MUON_NCCL_INCLUDE_DIR})
  target_link_libraries(muon_nccl INTERFACE muon::muon CUDA::cudart ${MUON_NCCL_LIBRARY})
  message(STATUS "muon: NCCL found (${MUON_NCCL_LIBRARY}): muon::nccl")
else()
  message(STATUS "muon: NCCL not found: muon::nccl not built")
endif()

# compute-sanitizer, for the memcheck test (tests/cuda); optional.
find_program(MUON_COMPUTE_SANITIZER compute-sanitizer
  HINTS ${CUDAToolkit_BIN_DIR} ${CUDAToolkit_BIN_DIR}/../compute-sanitizer)
