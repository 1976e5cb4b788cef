"""SASS instructions per 16-byte K/V copy in the decode kernel's loader, without a GPU.

Compiles the decode module (the sources in the order src/cuda/families.cpp concatenates them) with
nvcc -cubin for one tile, disassembles it with nvdisasm, and counts the instructions of each
load_kv_block path inside the key-block loop: the region from the loop's cp.async wait to its
commit, split at branch labels. The path with SHFL is the shared-page loader, the one with LDG the
per-row paged loader (with the branch dispatch), the other the contiguous loader. Issue 11 /
bench/device/NOTES.md (decode, v8) quote these counts as the prediction; they are not timings.

  python3 bench/device/loader_sass.py [--root DIR] [--arch sm_90a] [--warps 8] [--stages 3] [--head-dim 128]

Needs nvcc (CUDA_HOME or /usr/local/cuda) and nvdisasm ($NVDISASM, else PATH, else the copy in
triton's wheel). Prints one line per path: instructions, copies, instructions per copy.
"""
import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

MODULE = ["attention_params.cuh", "common/ptx.cuh", "decode/decode_config.cuh", "common/swizzle.cuh",
          "common/sequence.cuh", "decode/decode_fwd.cuh"]
INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,6}\*/\s+(.*?)\s*;")


def nvdisasm():
    found = os.environ.get("NVDISASM") or shutil.which("nvdisasm")
    if not found:
        try:
            import triton
            found = next(iter(glob.glob(os.path.join(os.path.dirname(triton.__file__),
                                                     "backends/nvidia/bin/nvdisasm"))), None)
        except ImportError:
            found = None
    if not found:
        sys.exit("nvdisasm not found: set NVDISASM")
    return found


def module_sass(root, module, arch, defines):
    """(SASS, ptxas resource lines) of one kernel module: `module` (paths under src/kernels, concatenated in
    src/cuda/families.cpp's order) compiled with nvcc -cubin and `defines`, disassembled with nvdisasm."""
    kernels = os.path.join(root, "src", "kernels")
    nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    with tempfile.TemporaryDirectory() as work:
        source, cubin = os.path.join(work, "module.cu"), os.path.join(work, "module.cubin")
        with open(source, "w") as f:
            for name in module:
                with open(os.path.join(kernels, name)) as part:
                    f.write(part.read())
        built = subprocess.run([nvcc, "-cubin", "-arch=" + arch, "--std=c++17", "-x", "cu", "--ptxas-options=-v",
                                *defines, "-o", cubin, source], capture_output=True, text=True)
        if built.returncode != 0:
            sys.exit("nvcc failed:\n" + built.stderr)
        resources = [line.split(":", 1)[-1].strip() for line in built.stderr.splitlines()
                     if "registers" in line or "spill" in line]
        sass = subprocess.run([nvdisasm(), "-c", cubin], check=True, capture_output=True, text=True).stdout
    return sass, resources


def loop_paths(sass):
    """(label, instructions) of each branch region from the key-block loop's wait to its commit."""
    lines = sass.splitlines()
    start = next(i for i, line in enumerate(lines) if "DEPBAR.LE" in line)
    end = next(i for i in range(start, len(lines)) if "LDGDEPBAR" in lines[i])
    paths, label, body = [], "dispatch", []
    for line in lines[start:end + 1]:
        if line.startswith(".L_x"):
            paths.append((label, body))
            label, body = line.strip().rstrip(":"), []
            continue
        match = INSTRUCTION.search(line)
        if match:
            body.append(match.group(1))
    paths.append((label, body))
    return paths


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=os.path.join(here, "..", ".."), help="attnforge checkout")
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--warps", type=int, default=8)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=128)
    args = parser.parse_args()
    defines = ["-DAF_HEAD_DIM=%d" % args.head_dim, "-DAF_BF16=1", "-DAF_WARPS=%d" % args.warps,
               "-DAF_KV_STAGES=%d" % args.stages, "-DAF_EXTRAS=0"]
    sass, _ = module_sass(args.root, MODULE, args.arch, defines)
    print("%s d%d %dw/%ds, per thread and key block:" % (args.arch, args.head_dim, args.warps, args.stages))
    for label, body in loop_paths(sass):
        ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", b).split()[0].split(".")[0] for b in body)
        copies = ops["LDGSTS"]
        if not copies:
            continue
        kind = "shared-page" if ops["SHFL"] else ("per-row paged" if ops["LDG"] else "contiguous")
        print("  %-14s %4d instructions, %3d copies, %5.2f per copy" % (kind, len(body), copies, len(body) / copies))


if __name__ == "__main__":
    main()
