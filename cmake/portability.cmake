# manylinux_2_28 portability of everything that ships (see src/portability/glibc_compat.cpp).
set(AF_GLIBC_WRAPPED
  pthread_create pthread_join pthread_detach pthread_once pthread_key_create __pthread_key_create
  pthread_key_delete pthread_getspecific pthread_setspecific dlopen dlsym dlerror dlclose dladdr
  stat fstat lstat fstatat exp log pow exp2 log2)
set(AF_PORTABLE_LINK_OPTIONS -static-libstdc++ -static-libgcc -Wl,-z,relro,-z,now)
foreach(symbol ${AF_GLIBC_WRAPPED})
  list(APPEND AF_PORTABLE_LINK_OPTIONS -Wl,--wrap=${symbol})
endforeach()
# The GLIBC_2.2.5 versions live in libpthread/libdl on glibc < 2.34: keep both NEEDED.
set(AF_PORTABLE_LINK_LIBRARIES "-Wl,--push-state,--no-as-needed" -l:libpthread.so.0 -l:libdl.so.2 "-Wl,--pop-state")
