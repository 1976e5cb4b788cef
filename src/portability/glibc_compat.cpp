// Keeps libattnforge.so and the attnforge command loadable on glibc 2.28
// (manylinux_2_28: RHEL 8, Debian 11, Ubuntu 20.04) although they are built on a
// newer glibc with libstdc++ and libgcc linked in statically.
//
// A new glibc gives its symbols new version nodes when it moves or changes them
// (pthread_* and dl* moved into libc at 2.34, stat at 2.33, exp/log/pow at 2.29), and the static
// runtime references functions that old systems lack (_dl_find_object 2.35 from
// libgcc's unwinder, arc4random 2.36 from libstdc++'s random.o,
// __libc_single_threaded 2.32 from libstdc++'s atomics). The link therefore:
//  - routes each moved function through --wrap=NAME to the __wrap_NAME below,
//    which calls the NAME@GLIBC_2.2.5 compatibility version every glibc still
//    exports (in libpthread/libdl on old systems, which is why those two are
//    DT_NEEDED; on new systems they are empty stubs);
//  - defines the three missing runtime symbols here, hidden, so the static
//    runtime binds to them instead of to glibc.
// tests/portability checks the result: no version above GLIBC_2.28, no GLIBCXX.
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>

#define AF_COMPAT_SYMBOL(local, versioned) __asm__(".symver " #local "," versioned)

extern "C" {

// ---- functions that moved: call the old version node ------------------------

int af_compat_pthread_create(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
int af_compat_pthread_join(pthread_t, void**);
int af_compat_pthread_detach(pthread_t);
int af_compat_pthread_once(pthread_once_t*, void (*)(void));
int af_compat_pthread_key_create(pthread_key_t*, void (*)(void*));
int af_compat_pthread_key_delete(pthread_key_t);
void* af_compat_pthread_getspecific(pthread_key_t);
int af_compat_pthread_setspecific(pthread_key_t, const void*);
void* af_compat_dlopen(const char*, int);
void* af_compat_dlsym(void*, const char*);
char* af_compat_dlerror(void);
int af_compat_dlclose(void*);
int af_compat_dladdr(const void*, Dl_info*);
int af_compat_xstat(int, const char*, struct stat*);
int af_compat_fxstat(int, int, struct stat*);
int af_compat_lxstat(int, const char*, struct stat*);
int af_compat_fxstatat(int, int, const char*, struct stat*, int);
double af_compat_exp(double);
double af_compat_log(double);
double af_compat_pow(double, double);
double af_compat_exp2(double);
double af_compat_log2(double);
AF_COMPAT_SYMBOL(af_compat_pthread_create, "pthread_create@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_pthread_join, "pthread_join@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_pthread_detach, "pthread_detach@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_pthread_once, "pthread_once@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_pthread_key_create, "pthread_key_create@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_pthread_key_delete, "pthread_key_delete@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_pthread_getspecific, "pthread_getspecific@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_pthread_setspecific, "pthread_setspecific@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_dlopen, "dlopen@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_dlsym, "dlsym@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_dlerror, "dlerror@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_dlclose, "dlclose@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_dladdr, "dladdr@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_xstat, "__xstat@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_fxstat, "__fxstat@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_lxstat, "__lxstat@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_fxstatat, "__fxstatat@GLIBC_2.4");
AF_COMPAT_SYMBOL(af_compat_exp, "exp@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_log, "log@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_pow, "pow@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_exp2, "exp2@GLIBC_2.2.5");
AF_COMPAT_SYMBOL(af_compat_log2, "log2@GLIBC_2.2.5");

#define AF_HIDDEN __attribute__((visibility("hidden")))

AF_HIDDEN int __wrap_pthread_create(pthread_t* t, const pthread_attr_t* a, void* (*f)(void*), void* arg) {
  return af_compat_pthread_create(t, a, f, arg);
}
AF_HIDDEN int __wrap_pthread_join(pthread_t t, void** r) { return af_compat_pthread_join(t, r); }
AF_HIDDEN int __wrap_pthread_detach(pthread_t t) { return af_compat_pthread_detach(t); }
AF_HIDDEN int __wrap_pthread_once(pthread_once_t* o, void (*f)(void)) { return af_compat_pthread_once(o, f); }
AF_HIDDEN int __wrap_pthread_key_create(pthread_key_t* k, void (*d)(void*)) {
  return af_compat_pthread_key_create(k, d);
}
// libstdc++'s gthreads test the (weak) address of __pthread_key_create to see
// whether threads are available; pointing it here keeps that answer "yes".
AF_HIDDEN int __wrap___pthread_key_create(pthread_key_t* k, void (*d)(void*)) {
  return af_compat_pthread_key_create(k, d);
}
AF_HIDDEN int __wrap_pthread_key_delete(pthread_key_t k) { return af_compat_pthread_key_delete(k); }
AF_HIDDEN void* __wrap_pthread_getspecific(pthread_key_t k) { return af_compat_pthread_getspecific(k); }
AF_HIDDEN int __wrap_pthread_setspecific(pthread_key_t k, const void* v) { return af_compat_pthread_setspecific(k, v); }
AF_HIDDEN void* __wrap_dlopen(const char* f, int m) { return af_compat_dlopen(f, m); }
AF_HIDDEN void* __wrap_dlsym(void* h, const char* s) { return af_compat_dlsym(h, s); }
AF_HIDDEN char* __wrap_dlerror(void) { return af_compat_dlerror(); }
AF_HIDDEN int __wrap_dlclose(void* h) { return af_compat_dlclose(h); }
AF_HIDDEN int __wrap_dladdr(const void* a, Dl_info* i) { return af_compat_dladdr(a, i); }
// _STAT_VER is 1 on x86-64: the struct stat layout glibc has always used there.
AF_HIDDEN int __wrap_stat(const char* p, struct stat* s) { return af_compat_xstat(1, p, s); }
AF_HIDDEN int __wrap_fstat(int fd, struct stat* s) { return af_compat_fxstat(1, fd, s); }
AF_HIDDEN int __wrap_lstat(const char* p, struct stat* s) { return af_compat_lxstat(1, p, s); }
AF_HIDDEN int __wrap_fstatat(int d, const char* p, struct stat* s, int f) { return af_compat_fxstatat(1, d, p, s, f); }
// glibc 2.29 added faster exp/log/pow/exp2/log2 under new versions; the old ones
// compute the same functions (correctly rounded within 1 ulp either way).
AF_HIDDEN double __wrap_exp(double x) { return af_compat_exp(x); }
AF_HIDDEN double __wrap_log(double x) { return af_compat_log(x); }
AF_HIDDEN double __wrap_pow(double x, double y) { return af_compat_pow(x, y); }
AF_HIDDEN double __wrap_exp2(double x) { return af_compat_exp2(x); }
AF_HIDDEN double __wrap_log2(double x) { return af_compat_log2(x); }

// ---- symbols the static runtime needs that glibc 2.28 does not have ---------

// Read by libstdc++'s reference counting to skip atomics in single-threaded
// processes; 0 ("maybe multi-threaded") always takes the atomic path, which is
// correct everywhere.
AF_HIDDEN char __libc_single_threaded = 0;

// Only std::random_device can reach this (attnforge never constructs one).
AF_HIDDEN uint32_t arc4random(void) {
  uint32_t value = 0;
  while (syscall(SYS_getrandom, &value, sizeof value, 0) != long(sizeof value)) {
  }
  return value;
}

// libgcc's unwinder asks _dl_find_object for the object containing pc and its
// .eh_frame_hdr; answer it from dl_iterate_phdr (glibc 2.2.5), as libgcc did
// before 2.35 (struct dl_find_object as declared by the build's <dlfcn.h>).
namespace {
struct FindObjectQuery {
  uintptr_t pc;
  struct dl_find_object* result;
  bool found;
};

int find_object_callback(struct dl_phdr_info* info, size_t, void* data) {
  auto* query = static_cast<FindObjectQuery*>(data);
  uintptr_t low = UINTPTR_MAX, high = 0;
  bool contains = false;
  const void* eh_frame = nullptr;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    const uintptr_t start = info->dlpi_addr + ph.p_vaddr;
    if (ph.p_type == PT_LOAD) {
      if (start < low) low = start;
      if (start + ph.p_memsz > high) high = start + ph.p_memsz;
      if (query->pc >= start && query->pc < start + ph.p_memsz) contains = true;
    } else if (ph.p_type == PT_GNU_EH_FRAME) {
      eh_frame = reinterpret_cast<const void*>(start);
    }
  }
  if (!contains) return 0;
  query->result->dlfo_flags = 0;
  query->result->dlfo_map_start = reinterpret_cast<void*>(low);
  query->result->dlfo_map_end = reinterpret_cast<void*>(high);
  query->result->dlfo_link_map = nullptr;
  query->result->dlfo_eh_frame = const_cast<void*>(eh_frame);
  query->found = true;
  return 1;
}
}  // namespace

AF_HIDDEN int _dl_find_object(void* pc, struct dl_find_object* result) {
  FindObjectQuery query{reinterpret_cast<uintptr_t>(pc), result, false};
  dl_iterate_phdr(find_object_callback, &query);
  return query.found ? 0 : -1;
}

}  // extern "C"
