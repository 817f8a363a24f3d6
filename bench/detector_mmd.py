"""MMD drift verdicts of modelloop's drift detector on the CPU and, where torch sees one, on CUDA.

    .venvs/detector/bin/python bench/detector_mmd.py [--reference-rows 5000] [--window-rows 1000]
        [--features 20] [--permutations 100] [--repeats 3]

The verdict goes through the service's own code (``VersionDetectors.judge_mmd``: standardize, then
alibi-detect's ``MMDDrift`` with the PyTorch backend) on the same arrays on each device. alibi's
permutation test is a Python loop of ``n_permutations`` steps, each drawing a permutation on the CPU,
indexing the (reference + window)^2 kernel matrix twice and reading one number back; the script
also times the loop alone (verdicts at 10 and at ``--permutations`` permutations) to show how much
of a verdict it is.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# The detector's source, for a machine where the package is not installed (a GPU machine with the
# wheels beside it); in .venvs/detector it is the same code as the installed (editable) package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes" / "detector" / "src"))

from modelloop_detector.detectors import DetectorSettings, VersionDetectors
from modelloop_detector.reference import Reference
from modelloop_detector.window import WindowSnapshot


def reference_of(rows: np.ndarray) -> Reference:
    features = tuple(f"f{index}" for index in range(rows.shape[1]))
    return Reference(
        uri="memory://bench",
        features=features,
        rows=rows,
        numeric=tuple(range(len(features))),
        categorical={},
    )


def timed(detectors: VersionDetectors, window: WindowSnapshot, repeats: int) -> tuple[float, bool, float]:
    import torch

    detectors.judge_mmd(window, now=0.0)  # warm-up: kernels, allocator, CUDA context
    seconds = []
    verdict = None
    for _ in range(repeats):
        if detectors.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        verdict = detectors.judge_mmd(window, now=0.0)
        seconds.append(time.perf_counter() - started)
    assert verdict is not None
    return statistics.median(seconds), verdict.drift, verdict.p_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-rows", type=int, default=5000)
    parser.add_argument("--window-rows", type=int, default=1000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    rng = np.random.default_rng(0)
    reference = reference_of(rng.normal(size=(args.reference_rows, args.features)))
    shifted = rng.normal(size=(args.window_rows, args.features))
    shifted[:, 0] += 0.3
    window = WindowSnapshot(shifted, np.full(args.window_rows, np.nan), args.window_rows)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(
        f"MMD verdict: {args.window_rows}x{args.features} window vs {args.reference_rows} reference rows, "
        f"{args.permutations} permutations, median of {args.repeats}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no CUDA device")
    )
    print(f"{'device':<8}{'verdict s':>12}{'10-perm s':>12}{'per perm ms':>13}{'drift':>7}{'p-value':>9}")
    results = {}
    for device in devices:
        built = {}
        for permutations in (args.permutations, 10):
            settings = DetectorSettings(device=device, mmd_permutations=permutations)  # type: ignore[arg-type]
            built[permutations] = VersionDetectors(reference, settings, None)
            assert built[permutations].device == device
        seconds, drift, p_value = timed(built[args.permutations], window, args.repeats)
        few, _, _ = timed(built[10], window, args.repeats)
        per_permutation = (seconds - few) / max(1, args.permutations - 10) * 1000
        results[device] = seconds
        print(f"{device:<8}{seconds:>12.4f}{few:>12.4f}{per_permutation:>13.3f}{drift!s:>7}{p_value:>9.3f}")
    if "cuda" in results:
        print(f"CUDA speedup over CPU: {results['cpu'] / results['cuda']:.1f}x")


if __name__ == "__main__":
    main()
