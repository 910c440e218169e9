"""What the learned stages know of a request's last user message, once analyzed: its
classifier verdict and embedding (made by `standalone.MessageAnalyzer`, kept on the Context)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Verdict:
    """The classifier's answer for one message."""

    label: str
    score: float
    standalone: bool
    why: str


@dataclass(frozen=True, slots=True)
class LastMessage:
    """The request's last user message as the learned stages see it."""

    text: str
    cleaned: str
    vector: np.ndarray
    verdict: Verdict
