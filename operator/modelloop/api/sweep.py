"""A TrainingRun's hyperparameter sweep: its search space, strategy, early stopping, and its trials' status.

Every field is bounded at admission so that no sweep can take the operator's memory or time: a Grid
sweep's size (the product of its parameters' value counts) is computed by a CEL rule, and a sweep's
status stays under etcd's object size by construction (``modelloop.training.sweep`` drops the oldest
finished trials past a byte budget and counts them in ``trialsDropped``).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import ConfigDict, Field, model_validator

from .meta import ApiModel, CelRule, MetricName, ParamValue, ShortText, cel_rules
from .validation import ObjectiveDirection

MAX_PARAMETERS = 16
"""Parameters a sweep may vary, lists and ranges together."""
MAX_VALUES = 100
"""Values a parameter's list (or a categorical range) may hold."""
MAX_VALUE_STRING = 128
"""Characters a string value of a sweep may have: a trial's status records its values, and a hundred
running trials must fit in the status together."""
MAX_TRIALS = 1000
"""Trials one sweep may run."""
MAX_CMAES_TRIALS = 300
"""Trials a CMA-ES sweep may run: each suggestion replays the whole history (about 0.2 s of CPU at 300
trials, a second at 1,000)."""
MAX_GRID = 1000
"""Combinations a Grid sweep may have when maxTrials does not bound it (maxTrials runs the first ones)."""
MAX_GRID_BOUNDED = 1_000_000
"""Combinations a Grid sweep may have at all."""
MAX_CURVE_POINTS = 100
"""Steps of a trial's learning curve that status records (the first ones); early stopping judges these."""
MAX_RUNGS = 16


class SweepStrategy(StrEnum):
    """How a sweep picks parameter combinations."""

    GRID = "Grid"
    RANDOM = "Random"
    BAYESIAN = "Bayesian"
    CMAES = "CMAES"


class ParameterType(StrEnum):
    """The kind of a parameter's range."""

    FLOAT = "float"
    INT = "int"
    CATEGORICAL = "categorical"


# Checked by the admission policy manifests/admission/free-form-bounds.yaml (CRD rules cannot see values).
CATEGORICAL_VALUES = "a categorical range needs values, and only a categorical range takes them"


class ParameterRange(ApiModel):
    """A parameter's range: numbers between min and max (optionally on a log scale or a step), or one of
    a list of values."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="self.type == 'categorical' || (has(self.min) && has(self.max))",
                message="a float or int range needs min and max",
            ),
            CelRule(
                rule="self.type != 'categorical' || (!has(self.min) && !has(self.max) && !has(self.step) "
                "&& !has(self.log))",
                message="a categorical range takes only values (no min, max, step or log)",
            ),
            CelRule(
                rule="!has(self.min) || !has(self.max) || self.min <= self.max",
                message="min must not exceed max",
                field_path=".min",
            ),
            CelRule(
                rule="!(has(self.log) && self.log) || (has(self.min) && self.min > 0.0)",
                message="a log range needs min > 0",
                field_path=".min",
            ),
            CelRule(
                rule="!(has(self.log) && self.log) || !has(self.step)",
                message="a log range takes no step",
                field_path=".step",
                reason="FieldValueForbidden",
            ),
            CelRule(
                rule="self.type != 'int' || ((!has(self.min) || self.min == double(int(self.min))) && "
                "(!has(self.max) || self.max == double(int(self.max))) && "
                "(!has(self.step) || self.step == double(int(self.step))))",
                message="an int range's min, max and step are integers",
            ),
        )
    )

    type: ParameterType = Field(description="float, int or categorical.")
    min: float | None = Field(None, ge=-1e15, le=1e15, description="Lowest value (float and int).")
    max: float | None = Field(None, ge=-1e15, le=1e15, description="Highest value (float and int).")
    log: bool | None = Field(None, description="Sample on a log scale (min > 0; no step).")
    step: float | None = Field(
        None, gt=0, le=1e15, description="Only multiples of step above min (int: default 1; float: none)."
    )
    values: list[ParamValue] | None = Field(
        None, min_length=1, max_length=MAX_VALUES, description="The choices of a categorical range."
    )

    @model_validator(mode="after")
    def _check_like_the_crd(self) -> Self:
        if self.type == ParameterType.CATEGORICAL:
            if self.values is None:
                raise ValueError(CATEGORICAL_VALUES)
            if any(v is not None for v in (self.min, self.max, self.step, self.log)):
                raise ValueError("a categorical range takes only values (no min, max, step or log)")
            return self
        if self.min is None or self.max is None:
            raise ValueError("a float or int range needs min and max")
        if self.values is not None:
            raise ValueError(CATEGORICAL_VALUES)
        if self.min > self.max:
            raise ValueError("min must not exceed max")
        if self.log and self.min <= 0:
            raise ValueError("a log range needs min > 0")
        if self.log and self.step is not None:
            raise ValueError("a log range takes no step")
        if self.type == ParameterType.INT and any(
            v is not None and v != int(v) for v in (self.min, self.max, self.step)
        ):
            raise ValueError("an int range's min, max and step are integers")
        return self

    def grid_size(self) -> int | None:
        """How many values a grid takes from this range; None when it is continuous (a float without step)."""
        if self.values is not None:
            return len(self.values)
        assert self.min is not None and self.max is not None
        step = self.step if self.step is not None else (1.0 if self.type == ParameterType.INT else None)
        if step is None:
            return None
        return int((self.max - self.min) / step + 1e-9) + 1  # 1e-9: (0.3 - 0.1) / 0.1 is 1.999...


class EarlyStoppingRule(StrEnum):
    """How hopeless trials are recognised."""

    MEDIAN = "Median"
    SUCCESSIVE_HALVING = "SuccessiveHalving"


class EarlyStopping(ApiModel):
    """Stop trials whose learning curve shows they will not win (Katib's medianstop; Optuna's pruners)."""

    rule: EarlyStoppingRule = Field(
        description="Median: stop a trial whose best value by step k is worse than the median of the "
        "completed trials at step k. SuccessiveHalving: keep the best 1/reductionFactor of the trials at "
        "each rung (steps startStep, startStep*reductionFactor, ...)."
    )
    start_step: int = Field(
        4, ge=1, le=1000, description="No trial is stopped before this step (Median: its warm-up)."
    )
    min_trials: int = Field(
        3, ge=1, le=100, description="Median: completed trials needed before any trial is stopped."
    )
    reduction_factor: int = Field(3, ge=2, le=10, description="SuccessiveHalving: the rungs' ratio.")


class SweepObjective(ApiModel):
    """The metric that picks a sweep's best trial."""

    metric: MetricName = Field(description="Name of the metric that ranks the trials.")
    direction: ObjectiveDirection = Field(
        ObjectiveDirection.MAXIMIZE, description="Maximize or Minimize the metric."
    )


class Sweep(ApiModel):
    """A hyperparameter sweep: one trial Job per parameter combination; the best trial is registered."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="!has(self.maxTrials) || !has(self.parallelism) || self.parallelism <= self.maxTrials",
                message="spec.sweep.parallelism must not exceed spec.sweep.maxTrials",
                field_path=".parallelism",
            ),
            CelRule(
                rule="self.strategy == 'Grid' || has(self.maxTrials)",
                message="spec.sweep.maxTrials is required unless spec.sweep.strategy is Grid",
                field_path=".maxTrials",
                reason="FieldValueRequired",
            ),
            CelRule(
                rule="self.strategy != 'Grid' || !has(self.space) || "
                "self.space.all(k, self.space[k].type != 'float' || has(self.space[k].step))",
                message="spec.sweep.space: a Grid sweep needs a step for every float range",
                field_path=".space",
            ),
            CelRule(
                rule="self.strategy != 'CMAES' || !has(self.maxTrials) || "
                f"self.maxTrials <= {MAX_CMAES_TRIALS}",
                message=f"spec.sweep.maxTrials is at most {MAX_CMAES_TRIALS} for CMAES",
                field_path=".maxTrials",
            ),
            CelRule(
                rule="!has(self.earlyStopping) || !has(self.maxTrials) || "
                "self.earlyStopping.rule != 'Median' || self.earlyStopping.minTrials < self.maxTrials",
                message="spec.sweep.earlyStopping.minTrials must be below spec.sweep.maxTrials",
                field_path=".earlyStopping.minTrials",
            ),
        )
    )

    strategy: SweepStrategy = Field(
        SweepStrategy.GRID,
        description="Grid tries every combination in order; Random samples maxTrials of them; Bayesian "
        "(TPE) and CMAES learn from the finished trials where to look next (Optuna's samplers).",
    )
    parameters: dict[str, Annotated[list[ParamValue], Field(min_length=1, max_length=MAX_VALUES)]] = Field(
        default_factory=dict,
        max_length=MAX_PARAMETERS,
        description="Candidate values per parameter; each trial overrides spec.params with one combination.",
    )
    space: dict[str, ParameterRange] = Field(
        default_factory=dict,
        max_length=MAX_PARAMETERS,
        description="Ranges per parameter: {type: float, min, max, log}, {type: int, min, max, step} or "
        "{type: categorical, values}; used with the lists in parameters.",
    )
    max_trials: int | None = Field(
        None, ge=1, le=MAX_TRIALS, description="Upper bound on the number of trials; required unless Grid."
    )
    parallelism: int = Field(1, ge=1, le=100, description="How many trials run at the same time.")
    objective: SweepObjective = Field(description="The metric that ranks the trials.")
    early_stopping: EarlyStopping | None = Field(
        None,
        description="Stop hopeless trials early, from the values the trainer reports after each step "
        "(epoch or boosting stage).",
    )
    retain_trial_jobs: bool = Field(
        False,
        description="Keep the Job and pod (and so the log) of every finished trial. By default a finished "
        "trial's Job is deleted once status records its result, except the best trial's; a failed trial's "
        "reason is posted as an event first.",
    )

    @model_validator(mode="after")
    def _check_like_the_crd(self) -> Self:
        if self.max_trials is not None and self.parallelism > self.max_trials:
            raise ValueError("spec.sweep.parallelism must not exceed spec.sweep.maxTrials")
        if self.strategy != SweepStrategy.GRID and self.max_trials is None:
            raise ValueError("spec.sweep.maxTrials is required unless spec.sweep.strategy is Grid")
        if (
            self.strategy == SweepStrategy.CMAES
            and self.max_trials is not None
            and self.max_trials > MAX_CMAES_TRIALS
        ):
            raise ValueError(f"spec.sweep.maxTrials is at most {MAX_CMAES_TRIALS} for CMAES")
        values = [v for vs in self.parameters.values() for v in vs]
        values += [v for r in self.space.values() for v in r.values or ()]
        if any(isinstance(v, str) and len(v) > MAX_VALUE_STRING for v in values):
            raise ValueError(
                f"spec.sweep: every value is a string (at most {MAX_VALUE_STRING} characters), a number or "
                "a boolean"
            )
        if not self.parameters and not self.space:
            raise ValueError("spec.sweep needs parameters (lists) or space (ranges)")
        if len(self.parameters) + len(self.space) > MAX_PARAMETERS:
            raise ValueError(
                f"spec.sweep varies at most {MAX_PARAMETERS} parameters (parameters and space together)"
            )
        if set(self.parameters) & set(self.space):
            raise ValueError("spec.sweep.space names a parameter that spec.sweep.parameters lists too")
        if self.strategy == SweepStrategy.GRID:
            if any(r.grid_size() is None for r in self.space.values()):
                raise ValueError("spec.sweep.space: a Grid sweep needs a step for every float range")
            limit = MAX_GRID_BOUNDED if self.max_trials is not None else MAX_GRID
            if self.grid_size() > limit:
                raise ValueError(
                    f"spec.sweep.parameters: a Grid sweep may have at most {MAX_GRID} combinations (the "
                    f"product of the parameters' value counts), or {MAX_GRID_BOUNDED} with "
                    "spec.sweep.maxTrials"
                )
        stopping = self.early_stopping
        if (
            stopping is not None
            and self.max_trials is not None
            and stopping.rule == EarlyStoppingRule.MEDIAN
            and stopping.min_trials >= self.max_trials
        ):
            raise ValueError("spec.sweep.earlyStopping.minTrials must be below spec.sweep.maxTrials")
        return self

    def grid_size(self) -> int:
        """The number of combinations of a grid over every parameter (a continuous range counts as one
        billion, which no grid admits)."""
        sizes = [len(values) for values in self.parameters.values()]
        sizes += [r.grid_size() or 1_000_000_000 for r in self.space.values()]
        return math.prod(sizes)

    def trial_count(self) -> int:
        """How many trials the sweep runs in all."""
        if self.strategy == SweepStrategy.GRID:
            size = self.grid_size()
            return size if self.max_trials is None else min(size, self.max_trials)
        assert self.max_trials is not None
        if self.strategy == SweepStrategy.RANDOM and not self.space:
            return min(self.grid_size(), self.max_trials)
        return self.max_trials


class TrialPhase(StrEnum):
    """Lifecycle phase of one trial of a sweep."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    PRUNED = "Pruned"


def is_empty(value: Any) -> bool:
    """Whether a map or list of a status is empty: such a field is left out when status is written (an empty
    one reads as a missing one), as status always wrote it, and status.trials' byte budget counts only what
    is written."""
    return not value


class Curve(ApiModel):
    """A trial's objective after each step, as the trainer reported it (the first steps only)."""

    steps: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list, max_length=MAX_CURVE_POINTS, description="The steps, ascending."
    )
    values: list[float] = Field(
        default_factory=list, max_length=MAX_CURVE_POINTS, description="The objective at each step."
    )


class Pruning(ApiModel):
    """Why a trial was stopped early."""

    step: int = Field(ge=1, description="The step at which the trial was stopped.")
    value: float = Field(description="The trial's best objective by that step.")
    threshold: float | None = Field(
        None,
        description="What it had to reach: the median (Median) or the rung's cut-off (SuccessiveHalving).",
    )
    rule: EarlyStoppingRule = Field(description="The rule that stopped it.")


class Trial(ApiModel):
    """One trial of a sweep."""

    index: int = Field(ge=0, description="Position of the trial in the sweep, from 0.")
    params: dict[str, ParamValue] = Field(
        default_factory=dict,
        max_length=MAX_PARAMETERS,
        exclude_if=is_empty,
        description="The sweep's parameters this trial ran with (the rest is spec.params).",
    )
    phase: TrialPhase | None = Field(None, description="Lifecycle phase of the trial.")
    metrics: dict[str, float] = Field(
        default_factory=dict, max_length=64, exclude_if=is_empty, description="Metrics the trial reported."
    )
    job_name: ShortText | None = Field(None, description="Name of the trial's Job.")
    curve: Curve | None = Field(None, description="The objective after each step (with early stopping).")
    rungs: list[float] = Field(
        default_factory=list,
        max_length=MAX_RUNGS,
        exclude_if=is_empty,
        description="SuccessiveHalving: its value at each rung.",
    )
    pruning: Pruning | None = Field(None, description="Why the trial was stopped early.")
    suggested_after: int | None = Field(
        None, ge=0, description="How many trials had finished when its parameters were suggested."
    )
    finished_order: int | None = Field(
        None, ge=0, description="Its place among the finished trials (0 for the first to finish)."
    )
