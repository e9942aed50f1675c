"""Builds fusedmlp._C: the C++ CPU kernels always, the CUDA kernels when a toolkit is found.

FUSEDMLP_BUILD_CUDA=auto (default) builds the CUDA kernels when nvcc and a CUDA build of
torch are present, 0 never does, 1 requires them and stops with a clear error otherwise.
TORCH_CUDA_ARCH_LIST is respected; the default is sm_80 and sm_90 plus PTX for sm_90.
Two experiments in the CUDA fused MLP (csrc/cuda/mlp.cu), each measured beside the default build
by bench/gpu_check.sh: FUSEDMLP_MLP_VECTOR_LOADS=1 builds its fp32/fp64 products with 16-byte
shared loads, FUSEDMLP_MLP_TF32X3=1 its fp32 products on tensor cores as three TF32 products.
Build with `pip install --no-build-isolation -e .` so the extension compiles against the
torch that is installed (build isolation would fetch a different one).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
# ptxas turns register spills into build errors: a spilling kernel is a performance bug
# that would otherwise only show up on a GPU we rarely have.
PTXAS_FLAGS = "-Xptxas=--warn-on-spills,--warning-as-error"


def _fail(message: str) -> None:
    sys.stderr.write(f"\nfusedmlp build error: {message}\n\n")
    raise SystemExit(1)


def _toolkit_from_nvcc() -> str | None:
    """The toolkit folder that holds the nvcc on PATH (which may be a wrapper script)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        dryrun = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        ).stderr
    except (OSError, subprocess.SubprocessError):
        dryrun = ""
    # nvcc reports its own install folder as TOP=<toolkit>/bin/..
    match = re.search(r"^#\$ TOP=(.+)$", dryrun, re.MULTILINE)
    candidates = [match.group(1).strip()] if match else []
    candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for candidate in candidates:
        candidate = os.path.realpath(candidate)
        if os.path.isfile(os.path.join(candidate, "bin", "nvcc")) and os.path.isfile(
            os.path.join(candidate, "include", "cuda_runtime.h")
        ):
            return candidate
    return None


def _want_cuda() -> bool:
    mode = os.environ.get("FUSEDMLP_BUILD_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        _fail(f"FUSEDMLP_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False
    import torch

    problems = []
    if torch.version.cuda is None:
        problems.append(f"the installed torch {torch.__version__} is not a CUDA build")
    if not os.environ.get("CUDA_HOME"):
        toolkit = _toolkit_from_nvcc()
        if toolkit is None:
            problems.append("no nvcc on PATH (or set CUDA_HOME to the toolkit folder holding bin/nvcc)")
        else:
            # torch guesses CUDA_HOME from `which nvcc`, which is wrong for wrapper scripts.
            os.environ["CUDA_HOME"] = toolkit
    elif not os.path.isfile(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")):
        problems.append(f"CUDA_HOME={os.environ['CUDA_HOME']} has no bin/nvcc")
    if problems:
        if mode == "1":
            _fail("FUSEDMLP_BUILD_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(problems))
        print("fusedmlp: building without CUDA kernels: " + "; ".join(problems), file=sys.stderr)
        return False
    return True


def _nvidia_wheel_include_dirs() -> list[str]:
    """CUDA headers torch's own kernels need (cusparse.h, ...) ship in the nvidia-* wheels."""
    try:
        import nvidia
    except ImportError:
        return []
    dirs = []
    for root in nvidia.__path__:
        dirs += sorted(glob.glob(os.path.join(root, "cu*", "include")))
        dirs += sorted(glob.glob(os.path.join(root, "*", "include")))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _extensions():
    # Decide (and set CUDA_HOME) before torch.utils.cpp_extension reads it at import.
    with_cuda = _want_cuda()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    def rel(pattern):
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))

    sources = ["csrc/fusedmlp.cpp"] + rel("csrc/autograd/*.cpp") + rel("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    # No -std flag: torch.utils.cpp_extension picks the standard its headers need (C++20 for 2.14).
    cxx_flags = ["-O3", "-fvisibility=hidden"]
    # A compiler that links libstdc++ statically (the H200 machine's /opt/gcc/bin/g++ finds only
    # libstdc++.a) puts a second copy of it in _C beside the libstdc++.so torch loaded, and
    # exports it: the runtime then binds some of the copy's references to the other one, and
    # every TORCH_CHECK message that formatted a number segfaulted there (an empty number here,
    # with -static-libstdc++). Symbols of static archives stay hidden, so such a copy serves _C
    # alone; with the usual dynamic libstdc++ the flag changes nothing. tests/test_build.py.
    link_flags = ["-Wl,--exclude-libs,ALL"]
    if not with_cuda:
        return [
            CppExtension(
                "fusedmlp._C",
                sources,
                include_dirs=include_dirs,
                extra_compile_args={"cxx": cxx_flags},
                extra_link_args=link_flags,
            )
        ]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", PTXAS_FLAGS]
    for option in ("FUSEDMLP_MLP_VECTOR_LOADS", "FUSEDMLP_MLP_TF32X3"):
        value = os.environ.get(option, "0")
        if value not in ("0", "1"):
            _fail(f"{option} must be 0 or 1, got {value!r}")
        nvcc_flags.append(f"-D{option}={value}")
    return [
        CUDAExtension(
            "fusedmlp._C",
            sources + rel("csrc/cuda/*.cu"),
            include_dirs=include_dirs + _nvidia_wheel_include_dirs(),
            extra_compile_args={"cxx": cxx_flags + ["-DFUSEDMLP_WITH_CUDA"], "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
    ]


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    class IncrementalBuildExtension(BuildExtension.with_options(use_ninja=True)):
        def build_extensions(self):
            # pip's editable builds compile in a fresh temporary folder every time; a fixed
            # one lets ninja rebuild only the sources that changed (minutes per .cu file).
            self.build_temp = os.path.join(ROOT, "build", "temp")
            super().build_extensions()

    return IncrementalBuildExtension


setup(
    packages=find_packages(include=["fusedmlp", "fusedmlp.*"]) + ["fusedmlp.triton_kernels"],
    package_dir={"fusedmlp.triton_kernels": "triton_kernels"},
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext()},
)
