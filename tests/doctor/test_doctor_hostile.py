"""`attnforge doctor wheel` on hostile archives stays within its documented budget
(docs/doctor-json-schema.md, "Limits"): at most 20 s, 256 MiB of memory and, on
disk, the uncompressed budget (max(256 MiB, 40x the archive), at most 8 GiB);
and it says when a limit is hit. A valid zip64 wheel with 100k members is read.

Run by ctest (doctor_fixtures) with AF_CLI_PATH.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib

import pytest

CLI = os.environ.get("AF_CLI_PATH", "attnforge")
if not (os.path.exists(CLI) or shutil.which(CLI)):
    pytest.skip("the attnforge command is not built (ctest's doctor_fixtures sets AF_CLI_PATH)",
                allow_module_level=True)

TIME_LIMIT_S = 20
MEMORY_LIMIT_KIB = 256 * 1024


def directory_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def run_doctor_measured(wheel, scratch):
    ("""Runs `doctor wheel --no-python --json` with TMPDIR=scratch: """
     """(exit code, report, seconds, max RSS KiB, peak disk bytes).""")
    peak = [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], directory_size(scratch))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    wrapper = ("import resource, subprocess, sys\n"
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "sys.stdout.write(r.stdout)\n"
               "sys.stderr.write('%d %d' % (r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", wrapper, CLI, "doctor", "wheel", wheel, "--no-python", "--json"],
                            capture_output=True, text=True, env=dict(os.environ, TMPDIR=scratch), timeout=300)
    seconds = time.monotonic() - start
    done.set()
    watcher.join()
    rc, rss = (int(x) for x in result.stderr.split()[-2:])
    return rc, json.loads(result.stdout), seconds, rss, peak[0]


def dist_info_files(name, files):
    """WHEEL, METADATA and a RECORD (without hashes: the hostile part is the archive, not RECORD)."""
    info = "%s-1.0.dist-info" % name
    out = {info + "/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp311-cp311-manylinux_2_17_x86_64\n",
           info + "/METADATA": ("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name).encode()}
    record = "".join("%s,,\n" % n for n in list(files) + list(out)) + info + "/RECORD,,\n"
    out[info + "/RECORD"] = record.encode()
    return out


def test_overlapping_members_are_refused(tmp_path):
    # One deflated 64 MiB member of zeros; 2000 more directory entries point at its
    # local header: extracted naively, 34 KB would write 2000 x 64 MiB.
    data = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = data.compress(b"\0" * (64 << 20)) + data.flush()
    crc = zlib.crc32(b"\0" * (64 << 20))
    name = b"pkg/_C.cpython-311-x86_64-linux-gnu.so"
    local = struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 0, 8, 0, 0, crc, len(payload), 64 << 20,
                        len(name), 0) + name + payload
    central = b""
    count = 2001
    for i in range(count):
        entry = ("pkg/_C%d.cpython-311-x86_64-linux-gnu.so" % i).encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, 20, 20, 0, 8, 0, 0, crc, len(payload), 64 << 20,
                               len(entry), 0, 0, 0, 0, 0, 0) + entry
    end = struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, count, count, len(central), len(local), 0)
    wheel = tmp_path / "bomb-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"
    wheel.write_bytes(local + central + end)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    rc, report, seconds, rss, disk = run_doctor_measured(str(wheel), str(scratch))
    w = report["wheels"][0]
    assert rc == 1 and not w["healthy"]
    f = next(f for f in w["findings"] if f["check"] == "wheel_archive")
    assert f["severity"] == "error" and "overlap" in f["summary"], f
    assert seconds < TIME_LIMIT_S and rss < MEMORY_LIMIT_KIB and disk < (1 << 20), (seconds, rss, disk)


@pytest.mark.parametrize("declared", ["honest", "understated"])
def test_zip_bomb_stops_at_the_budget(tmp_path, declared):
    # A compiled member of 2 GiB of zeros (~2 MB deflated), listed in RECORD. "understated"
    # declares 1 MiB in the directory but inflates to 2 GiB.
    size = 2 << 30
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunks, crc, block = [], 0, b"\0" * (16 << 20)
    for _ in range(size // len(block)):
        chunks.append(compressor.compress(block))
        crc = zlib.crc32(block, crc)
    chunks.append(compressor.flush())
    payload = b"".join(chunks)
    listed = size if declared == "honest" else 1 << 20
    name = b"pkg/_C.cpython-311-x86_64-linux-gnu.so"
    members = [(name, payload, crc, listed, 8)]
    for n, content in dist_info_files("bomb", [name.decode()]).items():
        members.append((n.encode(), content, zlib.crc32(content), len(content), 0))
    local, central = b"", b""
    for n, content, c, usize, method in members:
        offset = len(local)
        local += struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 0, method, 0, 0, c, len(content), usize,
                             len(n), 0) + n + content
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, 20, 20, 0, method, 0, 0, c, len(content), usize,
                               len(n), 0, 0, 0, 0, 0, offset) + n
    end = struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, len(members), len(members), len(central), len(local), 0)
    wheel = tmp_path / "bomb-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"
    wheel.write_bytes(local + central + end)
    assert wheel.stat().st_size < 3 << 20
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    rc, report, seconds, rss, disk = run_doctor_measured(str(wheel), str(scratch))
    w = report["wheels"][0]
    assert rc == 1 and not w["healthy"]
    summaries = " | ".join(f["summary"] for f in w["findings"])
    if declared == "honest":
        assert any(f["check"] == "wheel_archive" and "limit hit" in f["summary"] for f in w["findings"]), summaries
    else:
        assert "exceeds the declared size" in summaries, summaries
    assert seconds < TIME_LIMIT_S and rss < MEMORY_LIMIT_KIB and disk <= 256 << 20, (seconds, rss, disk)


def test_zip64_wheel_with_100k_members_is_read(tmp_path):
    files = {"many/__init__.py": b""}
    for i in range(100000):
        files["many/data/f%06d.txt" % i] = b"%d\n" % i
    files.update(dist_info_files("many", files))
    wheel = tmp_path / "many-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as z:
        for n, content in files.items():
            z.writestr(n, content)
    with open(wheel, "rb") as f:
        f.seek(-22, 2)
        assert struct.unpack("<H", f.read(22)[10:12])[0] == 0xffff  # really a zip64 archive
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    rc, report, seconds, rss, disk = run_doctor_measured(str(wheel), str(scratch))
    w = report["wheels"][0]
    assert w["readable"] and not [f for f in w["findings"] if f["check"] == "wheel_archive"], w["findings"]
    assert rc == 0 and w["healthy"], w["findings"]
    assert seconds < TIME_LIMIT_S and rss < MEMORY_LIMIT_KIB, (seconds, rss)
