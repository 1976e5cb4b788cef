"""On a machine with an NVIDIA GPU: the doctor's GPU-architecture verdict for
each fatbin fixture must match what really happens when its kernel launches
(cudaErrorNoKernelImageForDevice = 209 when the doctor says "no kernel image").

usage: python check_gpu_arch_on_device.py ATTNFORGE_CLI FIXTURE_DIR
Exits 0 when every prediction held (or, with a message, when there is no GPU), 1 otherwise.
"""
import ctypes
import json
import os
import subprocess
import sys

NO_KERNEL_IMAGE = 209


def launch_status(library_path):
    cudart = ctypes.CDLL("libcudart.so.13")
    library = ctypes.CDLL(library_path)
    pointer = ctypes.c_void_p()
    assert cudart.cudaMalloc(ctypes.byref(pointer), ctypes.c_size_t(1024)) == 0
    status = library.launch_add_one(pointer, ctypes.c_int(256))
    cudart.cudaFree(pointer)
    return status


def main():
    cli, fixtures = sys.argv[1], sys.argv[2]
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        print("no NVIDIA driver: nothing to check")
        return 0
    failures = 0
    for name in ("libfatbin_sm80.so", "libfatbin_sm80_sm90_ptx.so", "libfatbin_sm90a.so", "libfatbin_sm100a.so"):
        path = os.path.join(fixtures, "fatbin", name)
        result = subprocess.run([cli, "doctor", "so", "--no-python", "--json", path], capture_output=True, text=True)
        binary = json.loads(result.stdout)["binaries"][0]
        predicted_fail = any(f["check"] == "gpu_arch" and f["severity"] == "error" for f in binary["findings"])
        # Each library runs in its own process: a failed launch must not affect the next.
        status = int(subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r); "
                                     "import check_gpu_arch_on_device as c; "
                                     "print(c.launch_status(%r))" % (os.path.dirname(os.path.abspath(__file__)), path)],
                                    capture_output=True, text=True).stdout.strip() or -1)
        agrees = (status == NO_KERNEL_IMAGE) if predicted_fail else (status == 0)
        print("%-28s doctor: %-16s launch status %d  %s" % (name, "no kernel image" if predicted_fail else "runs",
                                                           status, "agrees" if agrees else "DISAGREES"))
        failures += not agrees
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
