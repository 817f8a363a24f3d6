"""Kolmogorov-Smirnov and Chi-square per feature, combined by Bonferroni or FDR, computed as
alibi-detect 0.11.4's ``KSDrift`` and ``ChiSquareDrift`` compute them, with scipy alone.

alibi-detect's import chain (``alibi_detect.cd`` and even ``alibi_detect.cd.base``) imports PyTorch,
about 900 MiB of resident memory: too much for the two fast tests that every service gets. The tests
check that these give alibi-detect's statistics, p-values, thresholds and verdicts on the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.stats import chi2_contingency, ks_2samp

Correction = Literal["bonferroni", "fdr"]
Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class UnivariateResult:
    """Per-feature p-values and statistics (float32, as alibi-detect returns them), and the combined
    verdict: drift when a p-value is below ``threshold``."""

    p_values: Float32Array
    distances: Float32Array
    drift: bool
    threshold: float


def combine(p_values: Float32Array, p_value: float, correction: Correction) -> tuple[bool, float]:
    """The batch verdict and its threshold: Bonferroni (``p_value / n``) or Benjamini-Hochberg FDR at
    ``p_value`` (the largest step threshold a sorted p-value is below; when none is, the smallest step,
    ``p_value / n``, where alibi-detect returns every step)."""
    count = len(p_values)
    if correction == "bonferroni" or count == 1:
        threshold = p_value / count if correction == "bonferroni" else p_value
        return bool((p_values < threshold).any()), float(threshold)
    steps = p_value * np.arange(1, count + 1) / count
    below = np.sort(p_values) < steps
    if not below.any():
        return False, float(steps[0])
    return True, float(steps[np.flatnonzero(below).max()])


class KSTest:
    """Two-sample Kolmogorov-Smirnov per feature (two-sided, asymptotic p-values) against ``reference``."""

    def __init__(self, reference: npt.NDArray[np.float64], *, p_value: float, correction: Correction) -> None:
        self.reference = reference.reshape(len(reference), -1)
        self.p_value = p_value
        self.correction = correction

    def judge(self, window: npt.NDArray[np.float64]) -> UnivariateResult:
        """Test ``window`` (rows by the reference's features)."""
        window = window.reshape(len(window), -1)
        count = self.reference.shape[1]
        p_values = np.zeros(count, dtype=np.float32)
        distances = np.zeros_like(p_values)
        for feature in range(count):
            result = ks_2samp(self.reference[:, feature], window[:, feature], method="asymp")
            distances[feature], p_values[feature] = result.statistic, result.pvalue
        drift, threshold = combine(p_values, self.p_value, self.correction)
        return UnivariateResult(p_values, distances, drift, threshold)


class ChiSquareTest:
    """Chi-square per categorical feature on the counts of every category seen in the reference or the
    window (with Yates' correction where a table has one degree of freedom, as scipy applies it)."""

    def __init__(self, reference: npt.NDArray[np.float64], *, p_value: float, correction: Correction) -> None:
        self.reference = reference.reshape(len(reference), -1)
        self.p_value = p_value
        self.correction = correction
        self._categories = [np.unique(column) for column in self.reference.T]

    def judge(self, window: npt.NDArray[np.float64]) -> UnivariateResult:
        """Test ``window`` (rows by the reference's features, as category codes)."""
        window = window.reshape(len(window), -1)
        count = self.reference.shape[1]
        p_values = np.zeros(count, dtype=np.float32)
        distances = np.zeros_like(p_values)
        for feature in range(count):
            categories = np.union1d(self._categories[feature], np.unique(window[:, feature]))
            table = np.vstack(
                [
                    _counts(self.reference[:, feature], categories),
                    _counts(window[:, feature], categories),
                ]
            )
            statistic, p, _, _ = chi2_contingency(table)
            distances[feature], p_values[feature] = statistic, p
        drift, threshold = combine(p_values, self.p_value, self.correction)
        return UnivariateResult(p_values, distances, drift, threshold)


def _counts(values: npt.NDArray[np.float64], categories: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    found, counts = np.unique(values, return_counts=True)
    result = np.zeros(len(categories), dtype=np.int64)
    result[np.searchsorted(categories, found)] = counts
    return result
