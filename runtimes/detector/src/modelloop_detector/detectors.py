"""The drift detectors of one version, built once from its reference and reused.

- ``ks``: Kolmogorov-Smirnov per numeric feature, combined by a multiple-testing correction;
- ``chi2``: Chi-square per categorical feature, combined the same way;
- ``mmd``: Maximum Mean Discrepancy on the joint numeric features, alibi-detect's ``MMDDrift`` (PyTorch
  backend, CUDA when allowed), only for the services that ask for it (it imports PyTorch: ~900 MiB);
- ``prediction``: the predictions' distribution against the model's predictions on the reference
  (Chi-square on classes, KS on values), when the registration names a predictions file.

``ks``, ``chi2`` and ``prediction`` are fast (milliseconds) and judged together; they are alibi-detect's
``KSDrift`` and ``ChiSquareDrift`` computed with scipy alone (:mod:`univariate`), since alibi-detect's
import chain pulls PyTorch in. ``mmd`` is a permutation test on a kernel matrix (seconds on CPU) and is
judged on its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from modelloop_detector.payloads import CategoryCodes, FloatArray
from modelloop_detector.reference import Reference
from modelloop_detector.univariate import ChiSquareTest, KSTest
from modelloop_detector.window import WindowSnapshot

logger = logging.getLogger(__name__)

DetectorName = Literal["ks", "chi2", "mmd", "prediction"]
FAST_DETECTORS: tuple[DetectorName, ...] = ("ks", "chi2", "prediction")
Correction = Literal["bonferroni", "fdr"]
Device = Literal["auto", "cpu", "cuda"]
PREDICTION_FEATURE = "prediction"


@dataclass(frozen=True)
class DetectorSettings:
    """How every version's detectors are built."""

    p_value: float = 0.05
    correction: Correction = "bonferroni"
    device: Device = "auto"
    mmd_permutations: int = 100
    mmd: bool = False
    """Whether a service that does not say (its registration's ``mmd``) gets the MMD detector."""


@dataclass(frozen=True)
class FeatureScore:
    """One feature's test: its statistic and p-value."""

    feature: str
    score: float
    p_value: float


@dataclass(frozen=True)
class Verdict:
    """One detector's judgement of one window.

    ``score``/``p_value`` are the combined ones: the largest statistic and the smallest p-value of
    a per-feature test, compared with ``threshold`` (the corrected p-value bound).
    """

    detector: DetectorName
    drift: bool
    score: float
    p_value: float
    threshold: float
    rows: int
    time: float
    seconds: float
    features: tuple[FeatureScore, ...] = ()


def torch_device(device: Device) -> str:
    """The torch device MMD runs on: CUDA when it is there and ``device`` allows it."""
    if device == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        logger.warning("--device cuda, but torch sees no CUDA device: MMD runs on the CPU")
    return "cuda" if available else "cpu"


class VersionDetectors:
    """The detectors of one version's reference; :meth:`judge_fast` and :meth:`judge_mmd` take windows."""

    def __init__(
        self,
        reference: Reference,
        settings: DetectorSettings,
        prediction_codes: CategoryCodes | None,
        *,
        mmd: bool | None = None,
    ) -> None:
        self.reference = reference
        self.settings = settings
        self._numeric = np.asarray(reference.numeric, dtype=np.intp)
        self._categorical = np.asarray(sorted(reference.categorical), dtype=np.intp)
        self._numeric_names = [reference.features[index] for index in reference.numeric]
        self._categorical_names = [reference.features[index] for index in self._categorical]
        rows = reference.rows
        correction = settings.correction
        self.ks: KSTest | None = None
        self.chi2: ChiSquareTest | None = None
        self.mmd: Any = None
        self.prediction: KSTest | ChiSquareTest | None = None
        self.device = "cpu"
        if len(self._numeric):
            numeric = np.ascontiguousarray(rows[:, self._numeric])
            self.ks = KSTest(numeric, p_value=settings.p_value, correction=correction)
            # MMD compares standardized float32 features: one kernel bandwidth fits every feature's
            # scale, and float32 halves the kernel matrix that the permutations copy.
            self._mean = numeric.mean(axis=0)
            std = numeric.std(axis=0)
            self._scale = np.where(std > 0, std, 1.0)
            if len(numeric) >= 2 and (settings.mmd if mmd is None else mmd):
                # Imported here, and only for MMD: alibi-detect imports PyTorch.
                from alibi_detect.cd import MMDDrift

                self.device = torch_device(settings.device)
                self.mmd = MMDDrift(
                    self.standardize(numeric),
                    backend="pytorch",
                    p_val=settings.p_value,
                    n_permutations=settings.mmd_permutations,
                    device=self.device,
                )
        if len(self._categorical):
            self.chi2 = ChiSquareTest(
                np.ascontiguousarray(rows[:, self._categorical]),
                p_value=settings.p_value,
                correction=correction,
            )
        if reference.predictions is not None:
            if reference.task == "classification":
                assert prediction_codes is not None
                codes = prediction_codes.encode(reference.predictions).reshape(-1, 1)
                self.prediction = ChiSquareTest(codes, p_value=settings.p_value, correction="bonferroni")
            else:
                values = reference.predictions.astype(np.float64).reshape(-1, 1)
                self.prediction = KSTest(values, p_value=settings.p_value, correction="bonferroni")

    def standardize(self, numeric: FloatArray) -> npt.NDArray[np.float32]:
        """Numeric features scaled by the reference's mean and standard deviation, as float32."""
        scaled: FloatArray = (numeric - self._mean) / self._scale
        return scaled.astype(np.float32)

    def judge_fast(self, window: WindowSnapshot, now: float) -> list[Verdict]:
        """The verdicts of the fast detectors (those this version has) on ``window``."""
        verdicts = []
        if self.ks is not None:
            verdicts.append(
                self._univariate("ks", self.ks, window.features[:, self._numeric], self._numeric_names, now)
            )
        if self.chi2 is not None:
            columns = window.features[:, self._categorical]
            verdicts.append(self._univariate("chi2", self.chi2, columns, self._categorical_names, now))
        if self.prediction is not None:
            predictions = window.predictions.reshape(-1, 1)
            if not np.isnan(predictions).any():
                verdict = self._univariate(
                    "prediction", self.prediction, predictions, [PREDICTION_FEATURE], now
                )
                verdicts.append(verdict)
        return verdicts

    def judge_mmd(self, window: WindowSnapshot, now: float) -> Verdict | None:
        """MMD's verdict on ``window``, or None when this version has no numeric features."""
        if self.mmd is None:
            return None
        started = time.perf_counter()
        result = self.mmd.predict(self.standardize(window.features[:, self._numeric]))["data"]
        return Verdict(
            detector="mmd",
            drift=bool(result["is_drift"]),
            score=float(result["distance"]),
            p_value=float(result["p_val"]),
            threshold=float(result["threshold"]),
            rows=window.rows,
            time=now,
            seconds=time.perf_counter() - started,
        )

    def _univariate(
        self,
        name: DetectorName,
        detector: KSTest | ChiSquareTest,
        x: FloatArray,
        features: list[str],
        now: float,
    ) -> Verdict:
        started = time.perf_counter()
        result = detector.judge(x)
        seconds = time.perf_counter() - started
        scores = result.distances.astype(np.float64)
        p_values = result.p_values.astype(np.float64)
        return Verdict(
            detector=name,
            drift=result.drift,
            score=float(scores.max()),
            p_value=float(p_values.min()),
            threshold=result.threshold,
            rows=len(x),
            time=now,
            seconds=seconds,
            features=tuple(
                FeatureScore(feature, float(score), float(p_value))
                for feature, score, p_value in zip(features, scores, p_values, strict=True)
            ),
        )
