# attnforge doctor: tests that need more than the GoogleTest binary.
#
#  doctor_fixtures            pytest: real failing binaries built here, each verdict checked against Python's import;
#                             hostile archives within the doctor's time, memory and disk budget
#  doctor_corpus              pytest: 31 pinned PyPI wheels, each verdict checked against a real import (issue 14)
#  doctor_fuzz_seed_corpus    writes the fuzzers' seed corpus (GoogleTest DoctorFuzzCorpus.*)
#  doctor_fuzz_{elf,fatbin,zip}  libFuzzer (clang) for AF_DOCTOR_FUZZ_SECONDS each; skipped (exit 77) without libFuzzer
#  doctor_portability_{library,cli}  `attnforge doctor so --portability manylinux_2_28` on our own binaries
#
# Labels: doctor (all), fuzz, portability. e.g. `ctest -L doctor`.

set(AF_DOCTOR_FUZZ_SECONDS 20 CACHE STRING "Seconds each doctor fuzz target runs under ctest")
# The project's virtual environment (scripts/install_deps.sh makes it, with pip's torch).
if(EXISTS ${CMAKE_SOURCE_DIR}/.venv/bin/python)
  set(AF_DOCTOR_DEFAULT_PYTHON ${CMAKE_SOURCE_DIR}/.venv/bin/python)
else()
  set(AF_DOCTOR_DEFAULT_PYTHON python3)
endif()
set(AF_DOCTOR_TEST_PYTHON ${AF_DOCTOR_DEFAULT_PYTHON} CACHE STRING "Python (with pytest) that runs the doctor fixture tests")

# libFuzzer needs clang; the project compiler may be GCC, so the fuzzers are
# built by a custom command with clang++ directly from the reader sources.
set(AF_DOCTOR_FUZZ_READERS
  ${CMAKE_SOURCE_DIR}/src/doctor/bytes.cpp ${CMAKE_SOURCE_DIR}/src/doctor/elf.cpp
  ${CMAKE_SOURCE_DIR}/src/doctor/fatbin.cpp ${CMAKE_SOURCE_DIR}/src/doctor/zip.cpp
  ${CMAKE_SOURCE_DIR}/src/doctor/ld_cache.cpp ${CMAKE_SOURCE_DIR}/src/common/sha256.cpp)
find_program(AF_CLANGXX NAMES clang++ clang++-18 clang++-17 clang++-16 clang++-15 clang++-14)
set(AF_DOCTOR_HAVE_LIBFUZZER OFF)
if(AF_CLANGXX)
  set(probe_dir ${CMAKE_BINARY_DIR}/doctor_fuzz_probe)
  file(MAKE_DIRECTORY ${probe_dir})
  file(WRITE ${probe_dir}/probe.cpp
    "#include <cstddef>\n#include <cstdint>\nextern \"C\" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n")
  execute_process(COMMAND ${AF_CLANGXX} -fsanitize=fuzzer,address ${probe_dir}/probe.cpp -o ${probe_dir}/probe
                  RESULT_VARIABLE probe_result OUTPUT_QUIET ERROR_QUIET)
  if(probe_result EQUAL 0)
    set(AF_DOCTOR_HAVE_LIBFUZZER ON)
  endif()
endif()

set(AF_DOCTOR_FUZZERS elf fatbin zip)
if(AF_DOCTOR_HAVE_LIBFUZZER)
  set(fuzz_binaries "")
  foreach(name ${AF_DOCTOR_FUZZERS})
    set(binary ${CMAKE_BINARY_DIR}/doctor_fuzz_${name})
    add_custom_command(OUTPUT ${binary}
      COMMAND ${AF_CLANGXX} -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
              -I${CMAKE_SOURCE_DIR}/src ${CMAKE_SOURCE_DIR}/tests/doctor/fuzz/fuzz_${name}.cpp ${AF_DOCTOR_FUZZ_READERS}
              -o ${binary}
      DEPENDS ${CMAKE_SOURCE_DIR}/tests/doctor/fuzz/fuzz_${name}.cpp ${AF_DOCTOR_FUZZ_READERS}
              ${CMAKE_SOURCE_DIR}/src/doctor/bytes.h ${CMAKE_SOURCE_DIR}/src/doctor/elf.h
              ${CMAKE_SOURCE_DIR}/src/doctor/fatbin.h ${CMAKE_SOURCE_DIR}/src/doctor/zip.h
              ${CMAKE_SOURCE_DIR}/src/doctor/ld_cache.h
      COMMENT "libFuzzer target doctor_fuzz_${name}")
    list(APPEND fuzz_binaries ${binary})
  endforeach()
  add_custom_target(doctor_fuzzers ALL DEPENDS ${fuzz_binaries})
endif()

if(ATTNFORGE_BUILD_TESTS)
  add_test(NAME doctor_fixtures
    COMMAND ${AF_DOCTOR_TEST_PYTHON} -m pytest -q -p no:cacheprovider ${CMAKE_SOURCE_DIR}/tests/doctor
            --ignore=${CMAKE_SOURCE_DIR}/tests/doctor/test_doctor_corpus.py)
  set_tests_properties(doctor_fixtures PROPERTIES LABELS doctor TIMEOUT 900
    ENVIRONMENT "AF_CLI_PATH=$<TARGET_FILE:attnforge_cli>;AF_DOCTOR_FIXTURE_DIR=${CMAKE_BINARY_DIR}/doctor_fixtures;AF_DOCTOR_VENV_PYTHON=${AF_DOCTOR_TEST_PYTHON}"
)

  # Issue 14: real PyPI wheels, each verdict checked against a real import (downloads cached between runs).
  set(AF_DOCTOR_WHEEL_CACHE "$ENV{HOME}/.cache/attnforge-tests/wheels" CACHE PATH "Where doctor_corpus keeps the PyPI wheels it downloads")
  add_test(NAME doctor_corpus
    COMMAND ${AF_DOCTOR_TEST_PYTHON} -m pytest -q -p no:cacheprovider ${CMAKE_SOURCE_DIR}/tests/doctor/test_doctor_corpus.py)
  set_tests_properties(doctor_corpus PROPERTIES LABELS doctor TIMEOUT 2400
    ENVIRONMENT "AF_CLI_PATH=$<TARGET_FILE:attnforge_cli>;AF_DOCTOR_VENV_PYTHON=${AF_DOCTOR_TEST_PYTHON};AF_DOCTOR_WHEEL_CACHE=${AF_DOCTOR_WHEEL_CACHE}")

  add_test(NAME doctor_fuzz_seed_corpus COMMAND attnforge_tests --gtest_filter=DoctorFuzzCorpus.*)
  set_tests_properties(doctor_fuzz_seed_corpus PROPERTIES LABELS "doctor;fuzz" FIXTURES_SETUP doctor_fuzz_corpus)
  # The nvcc fatbin seed comes from the fixtures when they ran first (optional).
  set_tests_properties(doctor_fuzz_seed_corpus PROPERTIES DEPENDS doctor_fixtures)

  foreach(name ${AF_DOCTOR_FUZZERS})
    set(corpus ${CMAKE_BINARY_DIR}/doctor_fuzz_corpus)
    if(AF_DOCTOR_HAVE_LIBFUZZER)
      # New inputs go to a scratch corpus; the seeds stay as written.
      add_test(NAME doctor_fuzz_${name}
        COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=0
                ${CMAKE_BINARY_DIR}/doctor_fuzz_${name} -max_total_time=${AF_DOCTOR_FUZZ_SECONDS} -rss_limit_mb=2048
                -timeout=10 -print_final_stats=1 ${corpus}/${name}_work ${corpus}/${name})
      set_tests_properties(doctor_fuzz_${name} PROPERTIES LABELS "doctor;fuzz" FIXTURES_REQUIRED doctor_fuzz_corpus
        TIMEOUT 300)
      add_test(NAME doctor_fuzz_${name}_workdir COMMAND ${CMAKE_COMMAND} -E make_directory ${corpus}/${name}_work)
      set_tests_properties(doctor_fuzz_${name}_workdir PROPERTIES LABELS "doctor;fuzz" FIXTURES_SETUP doctor_fuzz_corpus
        DEPENDS doctor_fuzz_seed_corpus)
    else()
      add_test(NAME doctor_fuzz_${name}
        COMMAND sh -c "echo 'libFuzzer unavailable: apt-get install clang-14 libclang-rt-14-dev'; exit 77")
      set_tests_properties(doctor_fuzz_${name} PROPERTIES LABELS "doctor;fuzz" SKIP_RETURN_CODE 77)
    endif()
  endforeach()

  # Issue 6: our own shipped binaries must load on manylinux_2_28 systems.
  add_test(NAME doctor_portability_library
    COMMAND attnforge_cli doctor so --portability manylinux_2_28 $<TARGET_FILE:attnforge>)
  add_test(NAME doctor_portability_cli
    COMMAND attnforge_cli doctor so --portability manylinux_2_28 $<TARGET_FILE:attnforge_cli>)
  set_tests_properties(doctor_portability_library doctor_portability_cli PROPERTIES LABELS "doctor;portability")
endif()
