"""Builds libattnforge.so and the `attnforge` command with CMake and bundles both in the wheel.

The package itself is pure Python (ctypes), but the wheel carries a compiled
library for one platform, so it is tagged py3-none-manylinux_2_28_<arch>: any
CPython >= 3.9, no Python ABI, glibc >= 2.28 (the library is linked so that
this holds: static libstdc++, glibc-only DT_NEEDED).

Environment:
  ATTNFORGE_CMAKE_BUILD_DIR  CMake build directory to use (default: inside the
                             setuptools build temp, under build-py/).
  ATTNFORGE_CMAKE_ARGS       extra arguments for the CMake configure step.
  ATTNFORGE_BUILD_JOBS       parallel build jobs (default 2).
"""
import os
import platform
import shlex
import shutil
import subprocess

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1 ships bdist_wheel in the `wheel` package
    from wheel.bdist_wheel import bdist_wheel

ROOT = os.path.dirname(os.path.abspath(__file__))


class BinaryDistribution(Distribution):
    """Not a pure distribution: the wheel holds a compiled library (platlib, platform tag)."""

    def has_ext_modules(self):
        return True


class BuildWithCMake(build_py):
    """build_py that first builds the library and the CLI and copies them into the package."""

    def run(self):
        super().run()
        build_dir = os.environ.get("ATTNFORGE_CMAKE_BUILD_DIR") or os.path.join(
            os.path.abspath(self.get_finalized_command("build").build_temp), "cmake")
        configure = ["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                     "-DATTNFORGE_BUILD_TESTS=OFF"]
        configure += shlex.split(os.environ.get("ATTNFORGE_CMAKE_ARGS", ""))
        jobs = os.environ.get("ATTNFORGE_BUILD_JOBS", "2")
        subprocess.check_call(configure)
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "attnforge", "attnforge_cli",
                               "-j", jobs])
        package_dir = os.path.join(self.build_lib, "attnforge")
        for source, subdir, name in (("libattnforge.so", "_lib", "libattnforge.so"),
                                     ("attnforge", "_bin", "attnforge")):
            target_dir = os.path.join(package_dir, subdir)
            os.makedirs(target_dir, exist_ok=True)
            shutil.copy2(os.path.join(build_dir, source), os.path.join(target_dir, name))


class PlatformWheel(bdist_wheel):
    """Tags the wheel py3-none-manylinux_2_28_<arch>: any Python 3, no Python ABI, this platform."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        return "py3", "none", "manylinux_2_28_" + platform.machine()


setup(
    distclass=BinaryDistribution,
    cmdclass={"build_py": BuildWithCMake, "bdist_wheel": PlatformWheel},
    options={"build": {"build_base": os.path.join("build-py", "setuptools")}},
)
