"""SASS instructions per key block in fwd_sm90's consumer main loop, by opcode class, without a GPU.

Compiles the fwd_sm90 module (the sources in the order src/cuda/families.cpp concatenates them, the -D
macros its compile_options gives the variant) with nvcc -cubin, disassembles it with nvdisasm, and
finds the consumers' key-block loop: the innermost backward branch whose body holds both the P V
wgmmas (HGMMA ... tnspB) and the exps (MUFU.EX2). Inside it, forward branches that skip a region
are the conditional parts: the mask (FSEL ... -INF), O's rescale (FMUL), the softmax's row rescale
(MUFU.EX2), others by address (v0's V-tail clear). Counts are instructions a warp issues per key
block (uniform-datapath ones included: they take issue slots too); the wait loops' retry paths lie
outside the loop and are not counted. Issue 13 / bench/device/NOTES.md (fwd_sm90, "lean main loop")
quote these counts as the prediction; they are not timings.

  python3 bench/device/sm90_sass.py [--root DIR] [--head-dim 128] [--dtype bf16] [--schedule pingpong-persistent]
      [--stages 2] [--block-m 128] [--block-n 176] [--q-buffers 1] [--no-cross-tile] [--extras] [--sass FILE]

--extras compiles the variant's extras form (AF_EXTRAS=1: a sliding window's left edge and softcap).

Needs nvcc (CUDA_HOME or /usr/local/cuda) and nvdisasm ($NVDISASM, else PATH, else triton's copy).
"""
import argparse
import collections
import os
import re
import sys

from loader_sass import module_sass

MODULE = ["attention_params.cuh", "common/ptx.cuh", "fwd_sm90/flash_fwd_sm90_config.cuh", "fwd_sm90/sm90_ptx.cuh",
          "common/sequence.cuh", "fwd_sm90/flash_fwd_sm90.cuh"]
# families.cpp's schedule names -> (AF_SM90_SCHEDULE, PERSISTENT, TMA_STORE, DYNAMIC).
SCHEDULES = {
    "v0": (0, 0, 0, 0), "overlap": (1, 0, 0, 0), "pingpong": (2, 0, 0, 0),
    "overlap-persistent": (1, 1, 0, 0), "pingpong-persistent": (2, 1, 0, 0),
    "overlap-persistent-tma-store": (1, 1, 1, 0), "pingpong-persistent-tma-store": (2, 1, 1, 0),
    "overlap-dynamic": (1, 1, 0, 1), "pingpong-dynamic": (2, 1, 0, 1),
}
LINE = re.compile(r"^\s*/\*([0-9a-f]{4,6})\*/\s+(.*?)\s*;")
LABEL = re.compile(r"^(\.L_x_\d+):")
BRANCH = re.compile(r"BRA\s+`\((\.L_x_\d+)\)")
GROUPS = [
    ("softmax math", ("FFMA", "FMUL", "FADD", "FMNMX", "MUFU", "F2FP")),
    ("tensor", ("HGMMA",)),
    ("sync", ("BAR", "SYNCS", "WARPGROUP", "WARPSYNC", "VOTE", "VOTEU", "SHFL")),
]


def opcode(text):
    """The opcode class of one instruction: its mnemonic without predicate, MUFU/BAR/WARPGROUP with their op."""
    words = re.sub(r"^@!?U?P\w+\s+", "", text).split()
    parts = words[0].split(".")
    return ".".join(parts[:2]) if parts[0] in ("MUFU", "BAR", "WARPGROUP") else parts[0]


def group(op):
    name = op.split(".")[0]
    for label, members in GROUPS:
        if name in members:
            return label
    if name.startswith("U") or name == "R2UR":
        return "uniform (descriptors, ring position)"
    if name in ("BRA", "BSSY", "BSYNC", "NOP"):
        return "control"
    return "integer, predicate, select, move"


def parse(sass):
    """[(address, text)] and {label: index of the next instruction}."""
    code, labels = [], {}
    for line in sass.splitlines():
        label = LABEL.match(line.strip())
        if label:
            labels[label.group(1)] = len(code)
            continue
        match = LINE.match(line)
        if match:
            code.append((int(match.group(1), 16), match.group(2)))
    return code, labels


def main_loop(code, labels):
    """(first, last) instruction indices of the innermost loop holding the P V wgmmas and the exps."""
    best = None
    for i, (_, text) in enumerate(code):
        branch = BRANCH.search(text)
        if not branch or labels.get(branch.group(1), i + 1) > i:
            continue
        first = labels[branch.group(1)]
        body = [t for _, t in code[first:i + 1]]
        if any("tnspB" in t for t in body) and any("MUFU.EX2" in t for t in body):
            if best is None or i - first < best[1] - best[0]:
                best = (first, i)
    if best is None:
        sys.exit("no loop with both HGMMA tnspB and MUFU.EX2 found")
    return best


def regions(code, labels, first, last):
    """{name: set of indices} of the loop's conditional regions (skipped by a forward branch)."""
    found = {}
    for i in range(first, last):
        branch = BRANCH.search(code[i][1])
        if not branch or not code[i][1].startswith("@"):
            continue
        target = labels.get(branch.group(1))
        if target is None or not i < target <= last:
            continue
        body = range(i + 1, target)
        texts = [code[j][1] for j in body]
        if any("FSEL" in t and "-INF" in t for t in texts):
            name = "mask"
        elif sum(opcode(t) == "FMUL" for t in texts) * 2 > len(texts):
            name = "O rescale"
        elif any("MUFU.EX2" in t for t in texts):
            name = "row rescale"  # the softmax's corrections of row_max and row_sum
        else:
            name = "branch %#x" % code[i][0]
        found.setdefault(name, set()).update(body)
    return found


def q_buffers(args, block_n, persistent, tma_store):
    """--q-buffers, else families.cpp's sm90_q_buffers: 2 in the persistent forms where a second Q tile fits."""
    if args.q_buffers:
        return args.q_buffers
    limit = 227 * 1024 - 1024
    q, ring = args.block_m * args.head_dim * 2, 2 * args.stages * block_n * args.head_dim * 2
    if not persistent or (tma_store and 2 * q + ring + 1024 > limit):
        return 1
    return 2 if (2 + tma_store) * q + ring + 1024 <= limit else 1


def deferred_max(args, block_n):
    """--deferred-max, else families.cpp's sm90_deferred_max_default: the 128 x 128 tiles of d64 and d128 with 2
    stages and no extras in pingpong-persistent and pingpong-dynamic."""
    if args.deferred_max is not None:
        return args.deferred_max
    return int(args.head_dim in (64, 128) and args.block_m == 128 and block_n == 128 and args.stages == 2 and
               not args.extras and args.schedule in ("pingpong-persistent", "pingpong-dynamic"))


def compile_sass(args):
    schedule, persistent, tma_store, dynamic = SCHEDULES[args.schedule]
    # sm90_tile in families.cpp, or --block-n ($ATTNFORGE_SM90_BLOCK_N's width).
    block_n = args.block_n or (64 if args.head_dim == 256 else 128)
    defines = ["-DAF_HEAD_DIM=%d" % args.head_dim, "-DAF_BF16=%d" % (args.dtype == "bf16"),
               "-DAF_WARPS=%d" % (4 + args.block_m // 16), "-DAF_BLOCK_M=%d" % args.block_m,
               "-DAF_KV_STAGES=%d" % args.stages, "-DAF_EXTRAS=%d" % args.extras, "-DAF_BLOCK_N=%d" % block_n,
               "-DAF_SM90_SCHEDULE=%d" % schedule, "-DAF_SM90_PERSISTENT=%d" % persistent,
               "-DAF_SM90_TMA_STORE=%d" % tma_store, "-DAF_SM90_DYNAMIC=%d" % dynamic,
               "-DAF_Q_BUFFERS=%d" % q_buffers(args, block_n, persistent, tma_store),
               "-DAF_CROSS_TILE=%d" % (not args.no_cross_tile), "-DAF_DEFERRED_MAX=%d" % deferred_max(args, block_n)]
    sass, resources = module_sass(args.root, MODULE, args.arch, defines)
    return sass, block_n, resources


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=os.path.join(here, "..", ".."), help="attnforge checkout")
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--head-dim", type=int, default=128, choices=(64, 128, 256))
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    parser.add_argument("--schedule", default="pingpong-persistent", choices=sorted(SCHEDULES))
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--block-m", type=int, default=128, choices=(128, 192), help="query rows per tile (192: d64)")
    parser.add_argument("--block-n", type=int, choices=range(64, 193, 16), metavar="{64,80,..,192}",
                        help="keys per block (default: 128, d256 64; $ATTNFORGE_SM90_BLOCK_N's widths)")
    parser.add_argument("--q-buffers", type=int, choices=(1, 2), help="Q tiles (default: sm90_q_buffers)")
    parser.add_argument("--deferred-max", type=int, choices=(0, 1),
                        help="AF_DEFERRED_MAX (default: the library's, sm90_deferred_max_default)")
    parser.add_argument("--no-cross-tile", action="store_true",
                        help="two Q tiles without the cross-tile pipeline (what NVRTC 12.1-12.8 compile)")
    parser.add_argument("--extras", action="store_true", help="the extras form (windows' left edge, softcap)")
    parser.add_argument("--sass", help="also write the disassembly here")
    args = parser.parse_args()
    sass, block_n, resources = compile_sass(args)
    if args.sass:
        with open(args.sass, "w") as f:
            f.write(sass)
    code, labels = parse(sass)
    first, last = main_loop(code, labels)
    parts = regions(code, labels, first, last)
    conditional = set().union(*parts.values()) if parts else set()
    columns = [("always", [i for i in range(first, last + 1) if i not in conditional])]
    columns += [(name, sorted(body)) for name, body in sorted(parts.items())]
    counts = [collections.Counter(opcode(code[i][1]) for i in body) for _, body in columns]
    print("%s %s d%d %s, %d stages: main loop %#x-%#x; %s" % (args.arch, args.dtype, args.head_dim, args.schedule,
                                                            args.stages, code[first][0], code[last][0],
                                                            "; ".join(resources)))
    print("instructions per warp and key block (%d keys, %d scores per thread)" % (block_n, block_n // 2))
    print("  %-18s" % "opcode" + "".join("%12s" % name[:11] for name, _ in columns))
    ops = sorted(set().union(*counts), key=lambda op: (group(op), -counts[0][op], op))
    shown = None
    for op in ops:
        if group(op) != shown:
            shown = group(op)
            print("  [%s]" % shown)
        print("  %-18s" % op + "".join("%12d" % c[op] for c in counts))
    print("  %-18s" % "total" + "".join("%12d" % sum(c.values()) for c in counts))
    always = sum(counts[0].values())
    extra = {name: sum(c.values()) for (name, _), c in zip(columns[1:], counts[1:])}
    rescale = extra.get("O rescale", 0) + extra.get("row rescale", 0)
    print("per block: %d without mask or rescale, %d with a rescale, %d masked with a rescale" % (
        always, always + rescale, always + rescale + extra.get("mask", 0)))
    scores, o = block_n // 2, args.head_dim // 2
    # S: one m64nNk16 per 16 of D (N = the block's keys); P V: per 16 keys one m64n128k16 per 128 of D
    # (m64n64k16 at d64).
    hgmma = args.head_dim // 16 + (block_n // 16) * max(1, args.head_dim // 128)
    # The math's floor: per score a scale-and-subtract FFMA, an exp2 (MUFU), a max (FMNMX: sm_90 has no
    # 3-input form) and an add into the row sum; an F2FP per two; O's rescale one FMUL per accumulator.
    floor = 4 * scores + scores // 2 + hgmma
    print("floor of the math: %d FFMA + %d MUFU + %d FMNMX + %d FADD + %d F2FP + %d HGMMA = %d (+ %d FMUL with a "
          "rescale, + a few SHFL/FMNMX per row)" % (scores, scores, scores, scores, scores // 2, hgmma, floor, o))


if __name__ == "__main__":
    main()
