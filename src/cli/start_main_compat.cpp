// The command's entry: glibc >= 2.34's crt1.o calls __libc_start_main@GLIBC_2.34,
// which glibc 2.28 lacks. The link wraps it (--wrap=__libc_start_main) to the
// GLIBC_2.2.5 version, passing an init function that runs the executable's
// constructors as the old crt1 did: old glibc runs them only through that
// argument, new glibc calls it instead of its own walk, so they run once on both.
// See src/portability/glibc_compat.cpp for the rest of the scheme.
#include <cstddef>

extern "C" {

using MainFn = int (*)(int, char**, char**);
using InitFn = void (*)(int, char**, char**);

int af_compat_libc_start_main(MainFn, int, char**, InitFn, void (*)(void), void (*)(void), void*);
__asm__(".symver af_compat_libc_start_main,__libc_start_main@GLIBC_2.2.5");

extern InitFn __preinit_array_start[] __attribute__((visibility("hidden")));
extern InitFn __preinit_array_end[] __attribute__((visibility("hidden")));
extern InitFn __init_array_start[] __attribute__((visibility("hidden")));
extern InitFn __init_array_end[] __attribute__((visibility("hidden")));

static void run_constructors(int argc, char** argv, char** envp) {
  for (InitFn* f = __preinit_array_start; f != __preinit_array_end; ++f) (*f)(argc, argv, envp);
  for (InitFn* f = __init_array_start; f != __init_array_end; ++f) (*f)(argc, argv, envp);
}

__attribute__((visibility("hidden"))) int __wrap___libc_start_main(MainFn main_fn, int argc, char** argv, InitFn,
                                                                   void (*)(void), void (*rtld_fini)(void),
                                                                   void* stack_end) {
  return af_compat_libc_start_main(main_fn, argc, argv, run_constructors, nullptr, rtld_fini, stack_end);
}

}  // extern "C"
