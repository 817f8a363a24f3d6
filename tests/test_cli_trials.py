"""``modelloop trials``: a sweep's trials, their learning curves, and why one was stopped early."""

from __future__ import annotations

from modelloop.cli.render import render_trials, sparkline


def test_a_sparkline_spans_low_to_high() -> None:
    assert sparkline([0.0, 0.5, 1.0], 0.0, 1.0) == "▁▅█"
    assert len(sparkline([0.5] * 100, 0.0, 1.0)) == 24


def test_trials_show_the_best_the_curves_and_why_a_trial_was_pruned() -> None:
    run = {
        "metadata": {"name": "digits"},
        "spec": {
            "sweep": {
                "strategy": "Bayesian",
                "objective": {"metric": "accuracy"},
                "earlyStopping": {"rule": "Median"},
            }
        },
        "status": {
            "phase": "Succeeded",
            "trialsStarted": 3,
            "trialsDropped": 1,
            "bestTrial": 1,
            "trials": [
                {
                    "index": 1,
                    "phase": "Succeeded",
                    "params": {"lr": 0.01},
                    "metrics": {"accuracy": 0.97},
                    "curve": {"steps": [1, 2, 3], "values": [0.5, 0.9, 0.97]},
                },
                {
                    "index": 2,
                    "phase": "Pruned",
                    "params": {"lr": 1e-5},
                    "curve": {"steps": [1, 2, 3, 4], "values": [0.1, 0.1, 0.11, 0.12]},
                    "pruning": {"step": 4, "value": 0.12, "threshold": 0.93, "rule": "Median"},
                },
            ],
        },
    }

    shown = render_trials(run)

    assert "Bayesian, early stopping Median" in shown
    assert "3 started, 1 dropped from status" in shown
    assert "   1*  Succeeded        0.97  ▄▇█" in shown
    assert "stopped at step 4 by Median: best 0.12 against 0.93" in shown
    assert "lr=1e-05" in shown
