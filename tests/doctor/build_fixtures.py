"""Builds the doctor's real failing (and healthy) binaries into one directory.

Each fixture is a real ELF produced by g++/gcc/nvcc here, reproducing one load
failure class (see shared/reference/ABI_FAILURES.md section 6). Fixtures are
built once per build directory; `build(out)` returns {name: path}. Every
fixture that needs an unavailable tool is left out, and `missing` says why.
"""
import os
import shutil
import subprocess
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = os.path.join(HERE, "fixtures")
NVCC = os.environ.get("AF_NVCC", "/usr/local/cuda/bin/nvcc")
DEBIAN_PYTHON = "/usr/bin/python3"
DEBIAN_TORCH_INCLUDE = "/usr/include"
DEBIAN_LIBC10 = "/usr/lib/x86_64-linux-gnu/libc10.so"
# The interpreter with pip's torch (ctest passes the project's .venv); its torch/lib is
# located without importing torch.
VENV_PYTHON = os.environ.get("AF_DOCTOR_VENV_PYTHON", sys.executable)


def _torch_lib_of(python):
    try:
        out = subprocess.run([python, "-c", "import importlib.util, os; s = importlib.util.find_spec('torch'); "
                              "print(os.path.join(os.path.dirname(s.origin), 'lib') if s else '')"],
                             capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out


VENV_TORCH_LIB = _torch_lib_of(VENV_PYTHON)

# The target interpreter for the fixtures: CPython 3.11 (both Pythons here).
PY_INCLUDE = sysconfig.get_paths()["include"]
EXT_SUFFIX = ".cpython-311-x86_64-linux-gnu.so"


def run(cmd, cwd=None):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError("fixture build failed: %s\n%s%s" % (" ".join(cmd), result.stdout, result.stderr))


def src(name):
    return os.path.join(SOURCES, name)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


class Builder:
    def __init__(self, out):
        self.out = out
        self.built = {}
        self.missing = {}
        os.makedirs(out, exist_ok=True)

    def path(self, *parts):
        p = os.path.join(self.out, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def once(self, name, target, recipe):
        """Runs recipe() unless target exists; records name -> target."""
        if not os.path.exists(target):
            recipe(target)
        self.built[name] = target

    # --- B: flash-attn's exact undefined symbol, both directions ------------
    def mini_c10(self, abi, target):
        run(["g++", "-shared", "-fPIC", "-O1", "-D_GLIBCXX_USE_CXX11_ABI=%d" % abi, src("mini_c10.cpp"),
             "-Wl,-soname,libc10.so", "-o", target])

    def c10_error_ext(self, ext_abi, lib_abi, dirname):
        module = "flash_attn_2_cuda"
        lib = self.path(dirname, "torch_abi%d" % lib_abi, "lib", "libc10.so")
        ext = self.path(dirname, module + EXT_SUFFIX)

        def recipe(target):
            self.mini_c10(lib_abi, lib)
            run(["g++", "-shared", "-fPIC", "-O1", "-D_GLIBCXX_USE_CXX11_ABI=%d" % ext_abi, "-DMODULE_NAME=" + module,
                 "-I" + PY_INCLUDE, src("c10_error_ext.cpp"), "-L" + os.path.dirname(lib), "-lc10",
                 "-Wl,-rpath,$ORIGIN/torch_abi%d/lib" % lib_abi, "-o", target])
        self.once(dirname, ext, recipe)

    # --- C: version drift -----------------------------------------------------
    def drift(self):
        lib = self.path("drift", "torchlib", "libc10.so")
        ext = self.path("drift", "drift_ext" + EXT_SUFFIX)

        def recipe(target):
            self.mini_c10(1, lib)
            run(["g++", "-shared", "-fPIC", "-O1", "-I" + PY_INCLUDE, src("drift_ext.cpp"), "-L" + os.path.dirname(lib),
                 # Keep DT_NEEDED libc10.so although it lacks the symbol (as when linked against an older torch).
                 "-Wl,--no-as-needed", "-lc10", "-Wl,-rpath,$ORIGIN/torchlib", "-o", target])
        self.once("drift", ext, recipe)

    # --- D: symbol versions newer than the system's -----------------------------
    def versioned_stub(self, define, soname, version, symbol, target, nostdlib):
        script = target + ".map"
        write(script, "%s { global: %s; local: *; };\n" % (version, symbol))
        cmd = ["gcc", "-shared", "-fPIC", "-D" + define, src("stub_versioned.c"), "-Wl,-soname," + soname,
               "-Wl,--version-script=" + script, "-o", target]
        run(cmd + (["-nostdlib"] if nostdlib else []))

    def too_new(self):
        def glibcxx(target):
            stub = self.path("too_new", "stub", "libstdc++.so.6")
            self.versioned_stub("STUB_GLIBCXX", "libstdc++.so.6", "GLIBCXX_3.4.32",
                                "_ZSt21__glibcxx_assert_failPKciS0_S0_", stub, False)
            run(["gcc", "-shared", "-fPIC", "-DMODULE_NAME=newcxx", "-DCALL_GLIBCXX_3_4_32", "-I" + PY_INCLUDE,
                 src("plain_module.c"), stub, "-o", target])
        self.once("glibcxx_too_new", self.path("too_new", "newcxx" + EXT_SUFFIX), glibcxx)

        def glibc(target):
            stub = self.path("too_new", "stub_libc", "libc.so.6")
            self.versioned_stub("STUB_GLIBC", "libc.so.6", "GLIBC_2.38", "strlcpy", stub, True)
            run(["gcc", "-shared", "-fPIC", "-nostdlib", "-DMODULE_NAME=newc", "-DCALL_GLIBC_2_38", "-I" + PY_INCLUDE,
                 src("plain_module.c"), stub, "-o", target])
        self.once("glibc_too_new", self.path("too_new", "newc" + EXT_SUFFIX), glibc)

    # --- E: CUDA runtime of another major ------------------------------------------
    def cudart12(self):
        def recipe(target):
            stub = self.path("cudart12", "link_only", "libcudart.so.12")
            run(["gcc", "-shared", "-fPIC", "-DSTUB_CUDART", src("stub_versioned.c"), "-Wl,-soname,libcudart.so.12",
                 "-o", stub])
            run(["gcc", "-shared", "-fPIC", "-DMODULE_NAME=cuda12_ext", "-DCALL_CUDART", "-I" + PY_INCLUDE,
                 src("plain_module.c"), stub, "-o", target])
        self.once("cudart12", self.path("cudart12", "cuda12_ext" + EXT_SUFFIX), recipe)

    # --- F: GPU code for chosen architectures (also NEEDED libcudart.so.13) ----------
    def fatbins(self):
        if not os.access(NVCC, os.X_OK):
            self.missing["fatbin"] = "nvcc not found at " + NVCC
            return
        sets = {
            "fatbin_sm80": ["-gencode", "arch=compute_80,code=sm_80"],
            "fatbin_sm80_sm90_ptx": ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
                                     "-gencode", "arch=compute_90,code=compute_90"],
            # Arch-specific cubins (issue 14): run only on exactly 9.0 / 10.0.
            "fatbin_sm90a": ["-gencode", "arch=compute_90a,code=sm_90a"],
            "fatbin_sm100a": ["-gencode", "arch=compute_100a,code=sm_100a"],
        }
        for name, flags in sets.items():
            def recipe(target, flags=flags):
                run([NVCC, "-shared", "-Xcompiler", "-fPIC", "-cudart", "shared"] + flags + [src("kernel.cu"), "-o", target])
            self.once(name, self.path("fatbin", "lib%s.so" % name), recipe)

    # --- G: Python ABI ------------------------------------------------------------
    def python_abi(self):
        def module(name, file_name, init=None, extra=()):
            def recipe(target):
                run(["gcc", "-shared", "-fPIC", "-DMODULE_NAME=" + name, "-DINIT_NAME=" + (init or name), "-I" + PY_INCLUDE]
                    + list(extra) + [src("plain_module.c"), "-o", target])
            return recipe
        self.once("cp312_suffix", self.path("pyabi", "mod.cpython-312-x86_64-linux-gnu.so"), module("mod", "mod"))
        self.once("wrong_init", self.path("pyabi", "other" + EXT_SUFFIX), module("other", "other", init="wrong"))
        self.once("abi3_ok", self.path("pyabi", "lim.abi3.so"),
                  module("lim", "lim", extra=["-DPy_LIMITED_API=0x03090000"]))
        self.once("plain_ok", self.path("pyabi", "good" + EXT_SUFFIX), module("good", "good"))

    # --- A: real Debian libtorch, both ABIs ------------------------------------------
    def debian_torch(self):
        if not os.path.exists(os.path.join(DEBIAN_TORCH_INCLUDE, "c10/util/Exception.h")) or not os.path.exists(DEBIAN_LIBC10):
            self.missing["debian_torch"] = "libtorch-dev (Debian) is not installed"
            return
        for abi in (0, 1):
            name = "debian_torch_abi%d" % abi

            def recipe(target, abi=abi, name=name):
                run(["g++", "-std=c++17", "-shared", "-fPIC", "-O1", "-w", "-D_GLIBCXX_USE_CXX11_ABI=%d" % abi,
                     "-DMODULE_NAME=" + name, "-I" + PY_INCLUDE, "-I" + DEBIAN_TORCH_INCLUDE, src("torch_check_ext.cpp"),
                     DEBIAN_LIBC10, "-o", target])
            self.once(name, self.path("debian_torch", name + EXT_SUFFIX), recipe)

    # --- I: load order / stray libc10 -----------------------------------------------------
    def load_order(self):
        libc10 = os.path.join(VENV_TORCH_LIB, "libc10.so")
        if not os.path.exists(libc10):
            self.missing["load_order"] = "pip torch is not installed for %s" % VENV_PYTHON
            return

        def recipe(target):
            # Linked by name (no RPATH): the loader must find libc10.so on its own.
            run(["g++", "-shared", "-fPIC", "-O1", "-I" + PY_INCLUDE, src("warn_always_ext.cpp"),
                 "-L" + VENV_TORCH_LIB, "-lc10", "-o", target])
        self.once("load_order", self.path("load_order", "warn_always_ext" + EXT_SUFFIX), recipe)

        def after_torch(target):
            run(["g++", "-shared", "-fPIC", "-O1", "-I" + PY_INCLUDE, src("c10_cuda_ext.cpp"),
                 "-L" + VENV_TORCH_LIB, "-lc10_cuda", "-o", target])
        if os.path.exists(os.path.join(VENV_TORCH_LIB, "libc10_cuda.so")):
            self.once("needs_torch_first", self.path("load_order", "c10_cuda_ext" + EXT_SUFFIX), after_torch)

        def torch_symbols(target):
            # Undefined C symbols of libtorch_cpu.so without linking it (a shared object may leave them open).
            run(["gcc", "-shared", "-fPIC", "-O1", "-DCALL_AOTI_TORCH", "-DMODULE_NAME=tensor_bridge",
                 "-I" + PY_INCLUDE, src("plain_module.c"), "-o", target])
        self.once("torch_symbols", self.path("load_order", "tensor_bridge" + EXT_SUFFIX), torch_symbols)

    def build_all(self):
        self.c10_error_ext(1, 0, "fa_cxx11_ext_vs_abi0_c10")
        self.c10_error_ext(0, 1, "fa_abi0_ext_vs_cxx11_c10")
        self.c10_error_ext(1, 1, "fa_matching_abi")
        self.drift()
        self.too_new()
        self.cudart12()
        self.python_abi()
        self.fatbins()
        self.debian_torch()
        self.load_order()
        return self.built


def build(out):
    builder = Builder(out)
    builder.build_all()
    return builder


if __name__ == "__main__":
    b = build(sys.argv[1])
    for name, path in sorted(b.built.items()):
        print(name, path)
    for name, why in b.missing.items():
        print("missing", name, why)
