"""TrainingRun: one training attempt (or one hyperparameter sweep) that runs as Kubernetes Jobs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, StringConstraints, WithJsonSchema, model_validator

from .affinity import Affinity
from .meta import (
    AGE_COLUMN,
    MAX_MAP_ENTRIES,
    ApiModel,
    CelRule,
    CrdInfo,
    DnsLabel,
    DnsSubdomain,
    ImageReference,
    LabelValue,
    ParamValue,
    PrinterColumn,
    Quantity,
    ResourceStatus,
    ShortText,
    Toleration,
    Trigger,
    Uri,
    cel_rules,
)
from .sweep import MAX_TRIALS, Sweep, Trial, is_empty
from .validation import Validation

CommandArgument = Annotated[str, StringConstraints(max_length=4096)]
# An entrypoint's words: the executable and its fixed arguments are never blank.
CommandWord = Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=r"\S")]


class TrainingRunPhase(StrEnum):
    """Lifecycle phase of a TrainingRun (and of each trial of a sweep)."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class DatasetFormat(StrEnum):
    """How the trainer reads a dataset."""

    CSV = "csv"
    PARQUET = "parquet"
    SKLEARN = "sklearn"


class AdditionalDatasetFormat(StrEnum):
    """How the trainer reads an additional dataset: a file, never a built-in dataset."""

    CSV = "csv"
    PARQUET = "parquet"


class AdditionalDataset(ApiModel):
    """A table appended to the dataset before the split, e.g. recent data exported by the drift detector."""

    uri: Uri = Field(description="Where the data lives, e.g. s3://drift/iris/recent-2024-05-01.csv.")
    format: AdditionalDatasetFormat = Field(
        AdditionalDatasetFormat.CSV, description="File format: csv or parquet."
    )
    hash: str | None = Field(
        None,
        max_length=256,
        pattern=r"^[a-z0-9]+:[a-fA-F0-9]+$",
        description="Expected content hash, e.g. sha256:<hex>; the run fails when the data differs.",
    )


class Dataset(ApiModel):
    """The data a run trains on."""

    uri: Uri = Field(description="Where the data lives, e.g. s3://bucket/iris.csv or sklearn://iris.")
    format: DatasetFormat = Field(
        DatasetFormat.CSV, description="File format: csv, parquet, or sklearn for a built-in dataset."
    )
    target_column: str | None = Field(
        None, min_length=1, max_length=256, description="Column holding the label to predict."
    )
    hash: str | None = Field(
        None,
        max_length=256,
        pattern=r"^[a-z0-9]+:[a-fA-F0-9]+$",
        description="Expected content hash, e.g. sha256:<hex>; the run fails when the data differs.",
    )
    additional: list[AdditionalDataset] = Field(
        default_factory=list,
        max_length=8,
        description=(
            "Further tables whose rows are appended to the main dataset before the split (e.g. recent data "
            "exported by the drift detector), in order; each must have the main dataset's columns. Rows "
            "whose target is missing are dropped."
        ),
    )


class TrainingResources(ApiModel):
    """Compute a training Job's pod requests."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="!has(self.gpuProduct) || (has(self.gpus) && self.gpus > 0)",
                message="spec.resources.gpuProduct requires spec.resources.gpus > 0",
                field_path=".gpuProduct",
                reason="FieldValueForbidden",
            )
        )
    )

    gpus: int = Field(0, ge=0, le=64, description="Number of GPUs (nvidia.com/gpu) the Job requests.")
    gpu_product: LabelValue | None = Field(
        None,
        min_length=1,
        description="GPU model to schedule on, e.g. NVIDIA-A100-SXM4-40GB (the node's GPU product label).",
    )
    cpu: Quantity | None = Field(None, description="CPU request, e.g. 2 or 500m.")
    memory: Quantity | None = Field(None, description="Memory request, e.g. 4Gi.")

    @model_validator(mode="after")
    def _check_like_the_crd(self) -> Self:
        if self.gpu_product is not None and self.gpus <= 0:
            raise ValueError("spec.resources.gpuProduct requires spec.resources.gpus > 0")
        return self


MAX_NODES = 64
"""Nodes one distributed run may span (each node is one pod)."""
MAX_PROCS_PER_NODE = 64
DISTRIBUTED_ESTIMATORS = ("TorchMLP", "TorchMLPClassifier", "TorchMLPRegressor")
"""The trainer's estimators that train across processes (DistributedDataParallel); scikit-learn's do not."""
DEFAULT_ESTIMATOR = "RandomForestClassifier"
"""The trainer's estimator when spec.params names none."""

ProcsPerNode = Annotated[
    Annotated[int, Field(ge=1, le=MAX_PROCS_PER_NODE)] | Literal["auto", "cpu", "gpu"],
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "minimum": 1,
            "maximum": MAX_PROCS_PER_NODE,
            "pattern": "^(auto|cpu|gpu)$",
            "maxLength": 4,
        }
    ),
]
"""Processes per node: a number, or ``gpu`` (one per GPU the node requests), ``cpu`` (one per whole CPU it
requests) or ``auto`` (``gpu`` when it requests GPUs, else 1)."""


class TrainingEngine(StrEnum):
    """What ran a TrainingRun's training."""

    JOB = "Job"
    """One pod in a batch/v1 Job (a run without spec.distributed)."""
    INDEXED_JOB = "IndexedJob"
    """A gang rendered by modelloop: an Indexed Job and a headless Service."""
    KUBEFLOW_TRAINER = "KubeflowTrainer"
    """A Kubeflow Trainer TrainJob (which runs as a JobSet)."""


class Distributed(ApiModel):
    """Training across several nodes with PyTorch DistributedDataParallel under torchrun: a gang of pods,
    all started together, configured through torchrun's PET_* variables."""

    nodes: int = Field(ge=1, le=MAX_NODES, description="Nodes (pods) of the gang, each one torchrun agent.")
    procs_per_node: ProcsPerNode = Field(
        "auto",
        description="Worker processes per node: a number, gpu (one per GPU in spec.resources.gpus), cpu (one "
        "per whole CPU in spec.resources.cpu) or auto (gpu when the run asks for GPUs, else 1).",
    )
    runtime: DnsSubdomain | None = Field(
        None,
        description="The Kubeflow Trainer ClusterTrainingRuntime a TrainJob references, where Kubeflow "
        "Trainer is installed; the operator's default (torch-distributed) when unset.",
    )


class ModelOutput(ApiModel):
    """The model that a successful run registers."""

    model_name: DnsLabel = Field(
        description="Name of the model; the run registers a new ModelVersion of this model."
    )
    artifact_uri_prefix: Uri | None = Field(
        None,
        description="Where the trainer stores the artifact, e.g. s3://models/iris; the run's name and the "
        "first 8 characters of its uid are appended, so a re-created run gets a new folder. Default: the "
        "operator's artifact root, then the namespace and the model's name.",
    )


class TrainingRunSpec(ApiModel):
    """The desired training run: what to run, on which data and hardware, and what model it produces."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            CelRule(
                rule="!has(self.distributed) || self.distributed.procsPerNode != 'gpu' || "
                "self.resources.gpus > 0",
                message="spec.distributed.procsPerNode: gpu needs spec.resources.gpus > 0",
                field_path=".distributed.procsPerNode",
                reason="FieldValueInvalid",
            ),
            CelRule(
                rule="!has(self.distributed) || self.distributed.procsPerNode != 'cpu' || "
                "has(self.resources.cpu)",
                message="spec.distributed.procsPerNode: cpu needs spec.resources.cpu",
                field_path=".distributed.procsPerNode",
                reason="FieldValueInvalid",
            ),
        )
    )

    image: ImageReference = Field(description="Container image of the trainer.")
    command: list[CommandWord] = Field(
        default_factory=list, max_length=64, description="Entrypoint of the trainer; the image's when empty."
    )
    args: list[CommandArgument] = Field(
        default_factory=list, max_length=256, description="Arguments to the entrypoint."
    )
    params: dict[str, ParamValue] = Field(
        default_factory=dict,
        max_length=MAX_MAP_ENTRIES,
        description="Hyperparameters passed to the trainer; values are strings, numbers or booleans.",
    )
    dataset: Dataset = Field(description="The data to train on.")
    resources: TrainingResources = Field(
        default_factory=TrainingResources,
        # Defaulting the object lets the API server fill in gpus: 0 for the GPUs printer column.
        json_schema_extra={"default": {}},
        description="CPU, memory and GPUs the training Job requests.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Tolerations of the training pod, e.g. for GPU taints.",
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=32, description="Node labels the training pod must be scheduled on."
    )
    affinity: Affinity | None = Field(
        None, description="Affinity of the training pod, a core/v1 Affinity passed through unchanged."
    )
    priority_class_name: DnsSubdomain | None = Field(None, description="PriorityClass of the training pod.")
    backoff_limit: int | None = Field(
        None,
        ge=0,
        le=100,
        description="Retries of the Job before the run fails; Kubernetes' default when unset. A distributed "
        "run restarts its whole gang this many times (none when unset).",
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Time limit of the Job in seconds; the run fails when it is exceeded."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Seconds after which a finished Job is deleted; the run keeps its status."
    )
    queue_name: DnsSubdomain | None = Field(
        None,
        description="Kueue LocalQueue to submit the Job (or a distributed run's whole gang) to (label "
        "kueue.x-k8s.io/queue-name): it starts suspended until Kueue admits it.",
    )
    distributed: Distributed | None = Field(
        None,
        description="Train across several nodes (PyTorch DDP under torchrun) on Kubeflow Trainer where it is "
        "installed, else as an Indexed Job; only the TorchMLP estimators train distributed.",
    )
    output: ModelOutput = Field(description="The model this run registers on success.")
    validation: Validation | None = Field(
        None, description="Gates the trained model must pass to become a Validated ModelVersion."
    )
    sweep: Sweep | None = Field(None, description="Run a hyperparameter sweep instead of a single training.")
    triggered_by: Trigger | None = Field(
        None, description="What started this run; set by the operator for runs started by a DriftPolicy."
    )

    @model_validator(mode="after")
    def _check_distributed(self) -> Self:
        distributed = self.distributed
        if distributed is None:
            return self
        if distributed.procs_per_node == "gpu" and self.resources.gpus <= 0:
            raise ValueError("spec.distributed.procsPerNode: gpu needs spec.resources.gpus > 0")
        if distributed.procs_per_node == "cpu" and self.resources.cpu is None:
            raise ValueError("spec.distributed.procsPerNode: cpu needs spec.resources.cpu")
        problem = distributed_estimator_problem(self)
        if problem is not None:
            raise ValueError(problem)
        return self


def distributed_estimator_problem(spec: TrainingRunSpec) -> str | None:
    """Why ``spec`` cannot train distributed: an estimator that is not one of the TorchMLP estimators, in
    spec.params (the trainer's default when it names none) or, where a sweep varies the estimator, among
    the sweep's values. The admission policy (manifests/admission) says the same."""
    if spec.distributed is None:
        return None
    candidates: list[tuple[str, object]] = []
    if spec.sweep is not None:
        listed = spec.sweep.parameters.get("estimator", [])
        candidates += [("spec.sweep.parameters.estimator", value) for value in listed]
        ranged = spec.sweep.space.get("estimator")
        if ranged is not None:
            candidates += [("spec.sweep.space.estimator", value) for value in ranged.values or ()]
    if not candidates:
        candidates = [("spec.params.estimator", spec.params.get("estimator", DEFAULT_ESTIMATOR))]
    for where, value in candidates:
        if value not in DISTRIBUTED_ESTIMATORS:
            return (
                f"{where}: {value} cannot train across nodes (spec.distributed); only "
                f"{', '.join(DISTRIBUTED_ESTIMATORS)} do"
            )
    return None


class TrainingRunStatus(ResourceStatus):
    """The observed state of a TrainingRun."""

    phase: TrainingRunPhase | None = Field(None, description="Pending, Running, Succeeded or Failed.")
    job_name: DnsSubdomain | None = Field(None, description="Name of the training Job.")
    start_time: datetime | None = Field(None, description="When the training Job started.")
    completion_time: datetime | None = Field(None, description="When the run succeeded or failed.")
    metrics: dict[str, float] = Field(
        default_factory=dict,
        max_length=MAX_MAP_ENTRIES,
        exclude_if=is_empty,
        description="Metrics the trainer reported.",
    )
    key_metric: ShortText | None = Field(
        None, description="The headline metric for kubectl get, e.g. accuracy=0.953."
    )
    artifact_uri: ShortText | None = Field(None, description="Where the trained model artifact was stored.")
    dataset_hash: ShortText | None = Field(
        None, description="Content hash of the data the model was trained on."
    )
    model_version: DnsSubdomain | None = Field(
        None, description="Name of the ModelVersion this run registered."
    )
    trials: list[Trial] = Field(
        default_factory=list,
        max_length=MAX_TRIALS,
        exclude_if=is_empty,
        description="The trials of a sweep (the oldest finished ones are dropped past a size budget).",
    )
    trials_started: int | None = Field(None, ge=0, description="How many trials of the sweep have started.")
    trials_dropped: int | None = Field(
        None, ge=0, description="Finished trials left out of status.trials to keep the status small."
    )
    best_trial: int | None = Field(
        None, ge=0, description="Index of the sweep's best trial by its objective."
    )
    champion: DnsSubdomain | None = Field(
        None, description="The champion the trainer evaluated on this run's held-out data."
    )
    engine: TrainingEngine | None = Field(
        None, description="What ran the training: Job, IndexedJob or KubeflowTrainer (a TrainJob)."
    )
    attempt: int | None = Field(
        None,
        ge=0,
        le=101,
        description="A distributed run's current attempt (0 first): a failed node fails its attempt, and "
        "each of spec.backoffLimit's retries restarts the whole gang as a new attempt.",
    )


TRAINING_RUN = CrdInfo(
    kind="TrainingRun",
    plural="trainingruns",
    singular="trainingrun",
    short_names=("tr",),
    description="TrainingRun trains a model in a Kubernetes Job and registers the result as a ModelVersion.",
    spec_model=TrainingRunSpec,
    status_model=TrainingRunStatus,
    printer_columns=(
        PrinterColumn("Phase", ".status.phase", "string", "Lifecycle phase of the run."),
        PrinterColumn("Model", ".spec.output.modelName", "string", "The model the run registers."),
        PrinterColumn("GPUs", ".spec.resources.gpus", "integer", "GPUs the training Job requests."),
        PrinterColumn("Metric", ".status.keyMetric", "string", "The headline metric of the trained model."),
        PrinterColumn("Nodes", ".spec.distributed.nodes", "integer", "Nodes of a distributed run.", 1),
        PrinterColumn("Engine", ".status.engine", "string", "What ran the training.", priority=1),
        PrinterColumn("Job", ".status.jobName", "string", "Name of the training Job.", priority=1),
        AGE_COLUMN,
    ),
    # A run is the record of one attempt: its ModelVersion's lineage and its sweep's trial indexes
    # describe the spec it ran with. Metadata (labels, annotations) stays editable.
    spec_rules=(
        CelRule(rule="self == oldSelf", message="spec is immutable: create a new TrainingRun instead"),
    ),
)
