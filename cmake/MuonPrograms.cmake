# Helpers for the project's own programs (bench/, examples/): included by
# those directories only, so none of this reaches consumers, and never installed.
#
#   muon_add_program(<name> <sources>... [CUDA] [LIBRARIES <targets>...])
#
# A C++ program links muon::muon, the LIBRARIES, the project's warning flags and
# muon_native_arch; with CUDA it links muon::cuda and the .cu warning flags
# instead (muon_native_arch holds C++-only options, nothing for a .cu file). The
# order matches the hand-written target_link_libraries calls it replaced, so the
# compile and link lines stay the same.

include_guard(GLOBAL)

# Header-only code is compiled with the consumer's flags; the printed timings
# of benchmarks and examples mean something only with the machine's vector
# units (AVX2/AVX-512) enabled.
option(MUON_NATIVE_ARCH "Compile benchmarks and examples with -march=native" ON)
add_library(muon_native_arch INTERFACE)
include(CheckCXXCompilerFlag)
check_cxx_compiler_flag(-march=native MUON_HAS_MARCH_NATIVE)
if(MUON_NATIVE_ARCH AND MUON_HAS_MARCH_NATIVE)
  target_compile_options(muon_native_arch INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
  # GCC 12's own AVX-512 headers trip -Wmaybe-uninitialized through
  # _mm512_undefined_ps (GCC bug 105593, fixed in GCC 13); must come after -Wall,
  # hence muon_native_arch last in muon_add_program.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    target_compile_options(muon_native_arch INTERFACE
      $<$<COMPILE_LANGUAGE:CXX>:-Wno-maybe-uninitialized>)
  endif()
endif()

# The heavy templates (the exact references above all) compiled once for every
# program, with the programs' own flags (see cmake/MuonInstances.cmake).
include(${CMAKE_CURRENT_LIST_DIR}/MuonInstances.cmake)
if(NOT TARGET muon_program_instances)
  muon_instances_library(muon_program_instances LIBRARIES muon_project_warnings muon_native_arch)
endif()

# muon_add_program(<name> <sources>... [CUDA] [INSTANCES] [LIBRARIES <targets>...])
# INSTANCES: the program includes <muon/extern_templates.hpp>; link the instances.
function(muon_add_program name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "CUDA;INSTANCES" "" "LIBRARIES")
  if(NOT arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "muon_add_program(${name}): no source files")
  endif()
  add_executable(${name} ${arg_UNPARSED_ARGUMENTS})
  if(arg_CUDA)
    target_link_libraries(${name} PRIVATE muon::cuda ${arg_LIBRARIES} muon_project_warnings
                          muon_cuda_project_warnings)
  else()
    target_link_libraries(${name} PRIVATE muon::muon ${arg_LIBRARIES} muon_project_warnings
                          muon_native_arch)
  endif()
  if(arg_INSTANCES)
    target_link_libraries(${name} PRIVATE muon_program_instances)
  endif()
endfunction()
