"""Every script in examples/ runs as a user would run it and prints what the tutorial prints."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, timeout=180):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)  # examples run as users run them
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_tutorial():
    out = run([os.path.join(EXAMPLES, "tutorial.py")])
    assert "Total number of trainable model parameters: 2213" in out
    assert "path: network:" in out or "path: layers:" in out
    assert "Epoch: 003/003 | Batch 001/002" in out
    assert "train accuracy: 1.00" in out and "test accuracy: 1.00" in out
    assert "saved and loaded: same predictions" in out


def test_convert_model():
    out = run([os.path.join(EXAMPLES, "convert_model.py")])
    assert "FusedLinearReLU" in out and "FusedReLUSlot" in out
    assert "step 5 | loss" in out
    assert "'layers.0.weight'" in out and "'layers.4.bias'" in out


def test_ddp_train_with_torchrun():
    out = run(
        [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            "--master_addr=127.0.0.1",
            os.path.join(EXAMPLES, "ddp_train.py"),
        ],
        timeout=240,
    )
    assert "[rank 0] Epoch: 003/003" in out and "[rank 1] Epoch: 003/003" in out
    assert "world size 2 | replicas identical" in out
