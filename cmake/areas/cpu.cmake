# The CPU tile kernel is compiled once per instruction set and chosen at run
# time (src/cpu/cpu_attention.cpp), so the library runs on any x86-64 and uses
# AVX2/AVX-512 where present. Never -march=native: the binary ships elsewhere.
# -ffp-contract=fast lets a * b + c become an FMA (ISO C++ mode turns it off).
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
  set_source_files_properties(${CMAKE_SOURCE_DIR}/src/cpu/kernel_baseline.cpp PROPERTIES
    COMPILE_OPTIONS "-O3;-ffp-contract=fast")
  set_source_files_properties(${CMAKE_SOURCE_DIR}/src/cpu/kernel_avx2.cpp PROPERTIES
    COMPILE_OPTIONS "-O3;-ffp-contract=fast;-mavx2;-mfma")
  set_source_files_properties(${CMAKE_SOURCE_DIR}/src/cpu/kernel_avx512.cpp PROPERTIES
    COMPILE_OPTIONS "-O3;-ffp-contract=fast;-mavx512f;-mavx2;-mfma")
  set_source_files_properties(${CMAKE_SOURCE_DIR}/src/cpu/kernel_avx512_bf16.cpp PROPERTIES
    COMPILE_OPTIONS "-O3;-ffp-contract=fast;-mavx512f;-mavx512bf16;-mavx2;-mfma")
else()
  set_source_files_properties(${CMAKE_SOURCE_DIR}/src/cpu/kernel_baseline.cpp PROPERTIES
    COMPILE_OPTIONS "-O3;-ffp-contract=fast")
endif()
