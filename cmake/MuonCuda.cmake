# The optional CUDA backend: the INTERFACE target muon::cuda (header-only; the
# kernels live in .cuh headers that the user's .cu translation unit compiles).
#
# Included from the top-level CMakeLists.txt when MUON_ENABLE_CUDA is ON.
# Defaults CMAKE_CUDA_ARCHITECTURES to sm_90 code plus portable compute_90 PTX
# unless the user chose architectures.

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES "90-real;90-virtual" CACHE STRING
      "CUDA architectures for muon's device code (default: sm_90 + compute_90 PTX)")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

add_library(muon_cuda INTERFACE)
add_library(muon::cuda ALIAS muon_cuda)
set_target_properties(muon_cuda PROPERTIES EXPORT_NAME cuda)
target_link_libraries(muon_cuda INTERFACE muon::muon CUDA::cudart CUDA::cublas CUDA::cublasLt)
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

# compute-sanitizer, for the memcheck test (tests/cuda); optional.
find_program(MUON_COMPUTE_SANITIZER compute-sanitizer
  HINTS ${CUDAToolkit_BIN_DIR} ${CUDAToolkit_BIN_DIR}/../compute-sanitizer)
