"""Build script for fscnn's Cython extensions.

Build switches (environment variables, read at build time):

FSCNN_OPENMP=0          build without OpenMP even when the compiler supports it.
FSCNN_REQUIRE_OPENMP=1  fail the build when OpenMP is not available (default: warn, build serial).
FSCNN_DEBUG=1           Cython bounds checks and assertions on, C asserts on, -O1 -g.
FSCNN_NATIVE=1          add -march=native (opt-in only: such a build crashes on older CPUs).
FSCNN_SANITIZE=LIST     build with -fsanitize=LIST (e.g. address,undefined or thread), -O1 -g
                        and frame pointers: for checking the C kernels (CI runs such builds).

SIMD code paths (baseline, AVX2+FMA, AVX-512) are always compiled into the same
extension through per-function target attributes and chosen at run time, so the
default build runs on any x86-64 CPU.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from glob import glob

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

INCLUDE_DIR = os.path.join("fscnn", "_ext", "include")


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _disabled(name):
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


OMP_TEST = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d\n", n > 0);
    return 0;
}
"""


def _openmp_candidates():
    """Compiler/linker flag pairs to try, most common first."""
    yield ["-fopenmp"], ["-fopenmp"]
    if sys.platform == "darwin":
        # Apple clang has no -fopenmp driver flag; libomp (e.g. from Homebrew) works through
        # the preprocessor flag plus an explicit -lomp.
        for prefix in ("/opt/homebrew/opt/libomp", "/usr/local/opt/libomp", "/opt/local"):
            if os.path.isdir(prefix):
                yield (["-Xpreprocessor", "-fopenmp", f"-I{prefix}/include"],
                       [f"-L{prefix}/lib", "-lomp", f"-Wl,-rpath,{prefix}/lib"])


def _compiles(compiler_cmd, cflags, ldflags):
    tmp = tempfile.mkdtemp(prefix="fscnn-omp-")
    try:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write(OMP_TEST)
        exe = os.path.join(tmp, "t")
        cmd = list(compiler_cmd) + cflags + [src, "-o", exe] + ldflags
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if res.returncode != 0:
            return False
        return subprocess.run([exe], stdout=subprocess.PIPE).returncode == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    """build_ext that probes OpenMP for the compiler actually in use."""

    def build_extensions(self):
        compiler_cmd = self.compiler.compiler_so[:1] if hasattr(self.compiler, "compiler_so") else ["cc"]
        omp_c, omp_l = self._probe_openmp(compiler_cmd)
        # setuptools compares timestamps, not flags: each variant (and compiler) compiles its
        # objects into its own directory, and a variant other than the last one built relinks
        # every extension.
        variant = "-".join([_variant(), os.path.basename(compiler_cmd[0]),
                            "openmp" if omp_c else "serial"])
        stamp = os.path.join(self.build_temp, "fscnn-variant")
        previous = open(stamp).read() if os.path.exists(stamp) else None
        self.force = self.force or previous != variant
        self.build_temp = os.path.join(self.build_temp, variant)
        for ext in self.extensions:
            ext.extra_compile_args = ext.extra_compile_args + omp_c
            ext.extra_link_args = ext.extra_link_args + omp_l
            ext.define_macros = ext.define_macros + [
                ("FSCNN_BUILD_COMPILER", '"%s"' % _compiler_version(compiler_cmd)),
            ]
        self._built = 0
        super().build_extensions()
        with open(stamp, "w") as f:
            f.write(variant)

    def build_extension(self, ext):
        # a default build compiles for a minute or more: say which extension is being built
        self._built += 1
        print(f"fscnn: [{self._built}/{len(self.extensions)}] building {ext.name} "
              "(SIMD variants for every CPU level: up to a minute each)", flush=True)
        start = time.perf_counter()
        super().build_extension(ext)
        print(f"fscnn: [{self._built}/{len(self.extensions)}] {ext.name} done in "
              f"{time.perf_counter() - start:.0f} s", flush=True)

    def _probe_openmp(self, compiler_cmd):
        if _disabled("FSCNN_OPENMP"):
            print("fscnn: OpenMP disabled by FSCNN_OPENMP=0; building serial kernels")
            return [], []
        for cflags, ldflags in _openmp_candidates():
            if _compiles(compiler_cmd, cflags, ldflags):
                print(f"fscnn: OpenMP enabled ({' '.join(cflags)})")
                return cflags, ldflags
        msg = (f"fscnn: the compiler {' '.join(compiler_cmd)!r} does not support OpenMP; "
               "building serial kernels (fscnn.set_num_threads will have no effect)")
        if _flag("FSCNN_REQUIRE_OPENMP"):
            raise RuntimeError(msg + " and FSCNN_REQUIRE_OPENMP=1 was set")
        warnings.warn(msg)
        return [], []


def _compiler_version(compiler_cmd):
    try:
        out = subprocess.run(list(compiler_cmd) + ["--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True).stdout
        return out.splitlines()[0].replace('"', "'").replace("\\", "/")[:120]
    except (OSError, IndexError):
        return " ".join(compiler_cmd)


def _sanitizers():
    """The FSCNN_SANITIZE list (e.g. "address,undefined"), "" when unset."""
    value = os.environ.get("FSCNN_SANITIZE", "").strip()
    if value and not all(part.isidentifier() for part in value.split(",")):
        raise ValueError(f"FSCNN_SANITIZE must be a comma-separated list of sanitizers, e.g. "
                         f"address,undefined, got {value!r}")
    return value


def _variant():
    """Name of the build variant: the switches that change the generated C or the objects."""
    sanitize = _sanitizers()
    return ("debug" if _flag("FSCNN_DEBUG") else "release") + \
        ("-native" if _flag("FSCNN_NATIVE") else "") + \
        ("-sanitize-" + sanitize.replace(",", "-") if sanitize else "")


def _extensions():
    debug = _flag("FSCNN_DEBUG")
    sanitize = _sanitizers()
    cflags = ["-O1", "-g"] if debug or sanitize else ["-O3", "-DNDEBUG"]
    cflags += ["-fno-strict-aliasing", "-Wno-unused-function"]
    ldflags = []
    if _flag("FSCNN_NATIVE"):
        cflags.append("-march=native")
    if sanitize:
        cflags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"]
        ldflags.append(f"-fsanitize={sanitize}")
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    if debug:
        macros.append(("FSCNN_DEBUG", "1"))
    exts = [
        Extension(
            f"fscnn._ext.{name}",
            [os.path.join("fscnn", "_ext", f"{name}.pyx")],
            include_dirs=[INCLUDE_DIR, np.get_include()],
            extra_compile_args=list(cflags),
            extra_link_args=list(ldflags),
            define_macros=list(macros),
            libraries=[] if sys.platform == "win32" else ["m"],  # expf (fscnn_common.h)
            depends=[os.path.join(INCLUDE_DIR, h) for h in os.listdir(INCLUDE_DIR)],
        )
        for name in sorted(os.path.basename(p)[:-4] for p in glob(os.path.join("fscnn", "_ext", "*.pyx")))
    ]
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": False,
        "initializedcheck": debug,
        "cdivision": not debug,
        "nonecheck": debug,
        "embedsignature": True,
    }
    # Generated C goes to a directory per variant: Cython regenerates a file only when its
    # .pyx is newer, so a debug build must not find the release build's C (or vice versa).
    print(f"fscnn: generating C from the Cython sources ({_variant()} build)", flush=True)
    return cythonize(exts, compiler_directives=directives, build_dir=os.path.join(
        "build", "cython-" + _variant()), compile_time_env={"FSCNN_DEBUG": debug}, quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
