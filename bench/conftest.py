"""pytest-benchmark suites (regression tracking, not tests):
    make bench-regress    (python -m pytest bench -o python_files='bench_*.py' --benchmark-autosave)
    then, after a change, add --benchmark-compare to compare with the last saved run.
One CPU thread, as the targets in bench/README.md assume."""

import torch

torch.set_num_threads(1)
