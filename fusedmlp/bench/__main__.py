"""`python -m fusedmlp.bench` (also the `fusedmlp-bench` script, and `make bench`).

Runs every op's benchmark on the detected device (quick mode by default, `--full` for the
whole matrix), prints a table, and writes bench/results/<device>.json and .png.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback

import torch

import fusedmlp

# (module under fusedmlp.bench, its run function). Modules absent from this install are
# reported, not skipped silently.
SUITES = [
    ("linear_relu", "run_linear_relu_bench"),
    ("cross_entropy", "run_cross_entropy_bench"),
    ("sgd", "run_sgd_bench"),
    ("mlp", "run_mlp_bench"),
]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{platform.machine()}"


def _progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<40}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


def _add_speedups(rows: list[dict]) -> None:
    eager = {
        (r["op"], r["case"]): r["median_ms"] for r in rows if r["provider"] in ("eager", "torch.optim.SGD:for-loop")
    }
    for r in rows:
        base = eager.get((r["op"], r["case"]))
        r["speedup_vs_eager"] = base / r["median_ms"] if base else None


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'op':<14} {'case':<34} {'provider':<26} {'median ms':>10} {'p20-p80 ms':>19} {'vs eager':>8} {'rate':>13}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        rate = ""
        if r.get("gbps") is not None:
            rate = f"{r['gbps']:.1f} GB/s"
        elif r.get("tflops") is not None:
            rate = f"{r['tflops']:.3f} TFLOP/s"
        speedup = f"{r['speedup_vs_eager']:.2f}x" if r.get("speedup_vs_eager") else ""
        spread = f"{r['p20_ms']:.4f}-{r['p80_ms']:.4f}"
        lines.append(
            f"{r['op']:<14} {r['case']:<34} {r['provider']:<26} {r['median_ms']:>10.4f} "
            f"{spread:>19} {speedup:>8} {rate:>13}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fused = [r for r in rows if r["provider"].startswith("fusedmlp:") and r.get("speedup_vs_eager")]
    if not fused:
        return
    labels = [f"{r['op']}\n{r['case']}\n{r['provider'].split(':')[1]}" for r in fused]
    values = [r["speedup_vs_eager"] for r in fused]
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(fused)), 5))
    ax.bar(range(len(fused)), values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(fused)), labels, rotation=90, fontsize=6)
    ax.set_ylabel("speedup vs eager PyTorch (x)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusedmlp-bench", description=__doc__)
    parser.add_argument("--full", action="store_true", help="the whole benchmark matrix (slow)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1, as the targets assume)")
    parser.add_argument(
        "--only", default=None, help="comma-separated suites, run in this order: " + ",".join(s for s, _ in SUITES)
    )
    parser.add_argument("--out", default=os.path.join("bench", "results"), help="folder for the .json and .png")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(args.threads)
    # One TF32 setting for every provider: off, as PyTorch's default for matmuls.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # --only runs its suites in the order given: a time-limited GPU call puts first what it needs most.
    by_name = dict(SUITES)
    if args.only is None:
        suites = SUITES
    else:
        unknown = [s for s in args.only.split(",") if s not in by_name]
        if unknown:
            parser.error(f"unknown suite(s) {unknown}; choose from {list(by_name)}")
        suites = [(s, by_name[s]) for s in args.only.split(",")]
    print(
        f"fusedmlp {fusedmlp.__version__} bench on {_device_name(device)} ({device.type}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), "
        f"{'full' if args.full else 'quick'} mode; backends: {fusedmlp.available_backends(device)}"
    )
    rows: list[dict] = []
    missing, failed = [], []
    start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    name = _device_name(device)
    json_path = os.path.join(args.out, f"{name}.json")

    def write_json() -> dict:
        meta = {
            "device": name,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "mode": "full" if args.full else "quick",
            "seconds": round(time.perf_counter() - start, 1),
            "cpu": platform.processor() or platform.machine(),
            "suites_failed": failed,
        }
        with open(json_path, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        return meta

    for i, (module_name, function_name) in enumerate(suites):
        _progress(i, len(suites), module_name)
        try:
            module = importlib.import_module(f"fusedmlp.bench.{module_name}")
        except ModuleNotFoundError as error:
            missing.append(f"{module_name} ({error})")
            continue
        try:
            rows += getattr(module, function_name)(quick=not args.full, device=device)
        except Exception as error:
            # Loud, and the exit status says so, but the other suites still run and their
            # results are written: a lent GPU's minutes are too scarce to lose them all.
            traceback.print_exc()
            failed.append(f"{module_name}: {type(error).__name__}: {error}")
        _add_speedups(rows)
        write_json()  # after every suite, so a run cut short by a time limit keeps what it measured
    _progress(len(suites), len(suites), "done")
    print(format_table(rows))
    for m in missing:
        print(f"not benchmarked: {m}")
    for f in failed:
        print(f"FAILED suite {f}")
    meta = write_json()
    plot(
        rows, os.path.join(args.out, f"{name}.png"), f"fusedmlp vs eager PyTorch on {name}, {meta['threads']} thread(s)"
    )
    print(f"wrote {args.out}/{name}.json and .png in {meta['seconds']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
