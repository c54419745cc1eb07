"""Evaluations: `evals.yaml` cases per persona, run against the real model, re-run on save."""

from bots.evals.loader import load_evals, parse_evals
from bots.evals.model import (
    EVALS_FILE,
    CaseResult,
    Checks,
    EvalCase,
    EvalError,
    EvalSuite,
    Flip,
    PersonaRun,
    flips,
)

__all__ = [
    "EVALS_FILE",
    "CaseResult",
    "Checks",
    "EvalCase",
    "EvalError",
    "EvalSuite",
    "Flip",
    "PersonaRun",
    "flips",
    "load_evals",
    "parse_evals",
]
