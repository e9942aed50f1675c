"""Does a C++ error raise cleanly on this machine, from torch and from each part of fusedmlp._C?

Run by bench/gpu_check.sh right after the build. On the first H200 run the first fusedmlp call
that raised a C++ error (a TORCH_CHECK in the CUDA MLP op's host code) killed the process with
a segfault, while the same host code raises cleanly on the CPU machines (fake CUDA tensors,
tests/test_build.py). Each case below raises one TORCH_CHECK error in its own subprocess, so a
crash is pinned to where the error was thrown: torch's own code, a C++ file of the extension
(csrc/cpu, csrc/autograd, built by the host compiler) or a CUDA file (csrc/cuda, host code
built by nvcc). Crashes everywhere point at the machine's unwinder/toolchain; crashes only in
the CUDA files at their host build; one case alone at that op.

Prints one line per case, then the toolchain facts that decide how exceptions unwind: the
compilers, the C++ runtime the extension links, the unwinder libraries loaded, and (LD_DEBUG)
which library the throwing case's `_Unwind_RaiseException` binds to.
"""

import os
import re
import shutil
import subprocess
import sys

# (name, needs a GPU, code that must raise RuntimeError)
CASES = [
    ("torch on CPU (ATen)", False, "torch.mm(torch.ones(2, 3), torch.ones(2, 3))"),
    ("torch on CUDA (ATen)", True, "torch.mm(cuda(2, 3), cuda(2, 3))"),
    (
        "fusedmlp csrc/cpu (mlp_fwd, shape check)",
        False,
        "torch.ops.fusedmlp.mlp_fwd(torch.ones(3, 4), [torch.ones(5, 6)], [])",
    ),
    (
        "fusedmlp csrc/autograd (mlp, shape check)",
        False,
        "torch.ops.fusedmlp.mlp(torch.ones(3, 4, requires_grad=True), [torch.ones(5, 6)], [])",
    ),
    (
        "fusedmlp csrc/cuda/linear_relu.cu (shape check)",
        True,
        "torch.ops.fusedmlp.linear_relu_fwd(cuda(3, 4), cuda(5, 6), None, True)",
    ),
    (
        "fusedmlp csrc/cuda/mlp.cu (shape check)",
        True,
        "torch.ops.fusedmlp.mlp_fwd(cuda(3, 4), [cuda(5, 6)], [])",
    ),
    (
        "fusedmlp csrc/cuda/mlp.cu (coverage check, the first run's crash)",
        True,
        "torch.ops.fusedmlp.mlp_fwd(cuda(3, 129), [cuda(8, 129), cuda(2, 8)], [])",
    ),
    (
        "fusedmlp csrc/cuda/cross_entropy.cu (target dtype check)",
        True,
        "torch.ops.fusedmlp.cross_entropy_fwd(cuda(3, 4), cuda(3), None, -100, 0.0, None, True)",
    ),
]

PROGRAM = """
import torch, fusedmlp
def cuda(*shape):
    return torch.ones(*shape, device="cuda")
try:
    {code}
except RuntimeError as error:
    print("raised RuntimeError:", str(error).splitlines()[0][:160])
else:
    print("did NOT raise")
"""


def run_case(code: str, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-X", "faulthandler", "-c", PROGRAM.format(code=code)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def outcome(code: str) -> str:
    result = run_case(code)
    if result.returncode == 0:
        return result.stdout.strip()
    where = result.stderr.strip().splitlines()[-12:]
    return f"CRASH (exit {result.returncode})\n      " + "\n      ".join(where)


def toolchain_facts(traced_code: str) -> list[str]:
    """Compilers and runtime libraries, and which library a throw in `traced_code` binds its
    unwinder to (LD_DEBUG=bindings)."""
    import torch

    from fusedmlp import _C

    facts = [f"torch {torch.__version__}, cxx11 abi {torch.compiled_with_cxx11_abi()}"]
    facts += re.findall(r"CXX_COMPILER=[^,]+", torch.__config__.show())
    # The first run's build used -ccbin /opt/gcc/bin/gcc for nvcc's host code.
    for compiler in ("gcc", "g++", "/opt/gcc/bin/gcc", os.environ.get("CXX", "")):
        if compiler and shutil.which(compiler):
            version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
            facts.append(f"{compiler}: {version.splitlines()[0] if version else '?'}")
    ldd = subprocess.run(["ldd", _C.__file__], capture_output=True, text=True).stdout
    facts += [f"_C links {line.strip()}" for line in ldd.splitlines() if "libgcc" in line or "libstdc++" in line]
    # Which unwinder a throw really uses: another library defining _Unwind_RaiseException (e.g.
    # libunwind.so) can win the dynamic binding and crash every C++ throw in the process.
    loaded = sorted({line.split()[-1] for line in open("/proc/self/maps") if "unwind" in line or "libgcc_s" in line})
    facts += [f"loaded: {path}" for path in loaded]
    traced = run_case(traced_code, LD_DEBUG="bindings").stderr.splitlines()
    providers = {line.split(" to ", 1)[1].split(" [")[0] for line in traced if "`_Unwind_RaiseException'" in line}
    facts += [f"_Unwind_RaiseException bound to: {path}" for path in sorted(providers)]
    return facts


def main() -> int:
    import torch

    has_gpu = torch.cuda.is_available()
    crashed = 0
    for name, needs_gpu, code in CASES:
        if needs_gpu and not has_gpu:
            print(f"{name}: skipped (no GPU)")
            continue
        result = outcome(code)
        crashed += result.startswith("CRASH")
        print(f"{name}: {result}")
    print("-- toolchain")
    # The first run's crash where a GPU is present, else torch's own CPU error.
    traced = next(code for name, needs_gpu, code in CASES if needs_gpu == has_gpu and (not has_gpu or "crash" in name))
    for fact in toolchain_facts(traced):
        print(fact)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
