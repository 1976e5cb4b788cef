# The CPU tile kernel is compiled once per instruction set and chosen at run
# time (src/cpu/cpu_attention.cpp), so the library runs on any x86-64 and uses
# AVX2 / AVX-512 / AVX512-BF16 where present. Never -march=native: the binary
# ships to other machines. -ffp-contract=fast lets a * b + c become an FMA
# (ISO C++ mode turns contraction off).
include(CheckCXXCompilerFlag)
set(AF_CPU_DIR ${CMAKE_SOURCE_DIR}/src/cpu)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
  set_source_files_properties(${AF_CPU_DIR}/kernel_baseline.cpp PROPERTIES COMPILE_OPTIONS "-O3;-ffp-contract=fast")
  set_source_files_properties(${AF_CPU_DIR}/kernel_avx2.cpp PROPERTIES
    COMPILE_OPTIONS "-O3;-ffp-contract=fast;-mavx2;-mfma")
  set_source_files_properties(${AF_CPU_DIR}/kernel_avx512.cpp PROPERTIES
    COMPILE_OPTIONS "-O3;-ffp-contract=fast;-mavx512f;-mavx2;-mfma")
  check_cxx_compiler_flag(-mavx512bf16 AF_COMPILER_HAS_AVX512BF16)
  if(AF_COMPILER_HAS_AVX512BF16)
    set_source_files_properties(${AF_CPU_DIR}/kernel_avx512_bf16.cpp PROPERTIES
      COMPILE_OPTIONS "-O3;-ffp-contract=fast;-mavx512f;-mavx512bf16;-mavx2;-mfma")
  else()
    # An older compiler: the variant is built without the bf16 dot products
    # (it then runs the plain AVX-512 code for bf16 too).
    set_source_files_properties(${AF_CPU_DIR}/kernel_avx512_bf16.cpp PROPERTIES
      COMPILE_OPTIONS "-O3;-ffp-contract=fast;-mavx512f;-mavx2;-mfma;-DAF_BF16_PAIRS=0")
  endif()
else()
  # Elsewhere the ISA variants compile as portable vector code; only the
  # baseline one is ever chosen (isa_supported).
  set_source_files_properties(${AF_CPU_DIR}/kernel_baseline.cpp PROPERTIES COMPILE_OPTIONS "-O3;-ffp-contract=fast")
endif()
