"""Training across processes: a ``torchrun`` launch, read from its environment, and its process group.

A distributed TrainingRun's pods run ``torchrun --no-python modelloop-train`` with torchrun configured
through ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and
``PET_MASTER_PORT``. torchrun starts one ``modelloop-train`` per process and gives each its place in the
job: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK`` (the node),
``GROUP_WORLD_SIZE`` (the nodes), ``MASTER_ADDR`` and ``MASTER_PORT`` (its rendezvous store). A launch
with ``WORLD_SIZE`` above 1 is distributed; anything else trains in one process, as without torchrun.

Every process reads, checks, splits and preprocesses the whole dataset itself, with the same seed, so
that all of them hold the same split, the same label encoding and the same normalization; only the
training rows' batches are shared out (see :meth:`modelloop_trainer.torch_mlp.TorchMLP.fit`). Global
rank 0, the primary, is the only one that evaluates, writes the artifacts and reports the result.

PyTorch is imported only when a process group is made, like everywhere else in the trainer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from modelloop_trainer.errors import FailureReason, TrainerError

log = logging.getLogger(__name__)

ENV_TIMEOUT = "MODELLOOP_DISTRIBUTED_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_SECONDS = 600
MAX_TIMEOUT_SECONDS = 86_400
# torchrun's variables that a distributed process cannot do without.
_REQUIRED = ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedLaunch:
    """This process's place in a torchrun job of more than one process."""

    rank: int
    """Global rank, 0 to ``world_size`` - 1; rank 0 is the primary."""
    world_size: int
    local_rank: int
    """Rank among the processes of this node (pod); with CUDA, the index of this process's GPU."""
    local_world_size: int
    node_rank: int
    """torchrun's ``GROUP_RANK``: the node's index, ``PET_NODE_RANK``."""
    nodes: int
    """torchrun's ``GROUP_WORLD_SIZE``: the number of nodes."""
    master_addr: str
    master_port: int
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    """How long a collective operation (and joining the group) may wait for the other processes."""

    @property
    def is_primary(self) -> bool:
        """Whether this is global rank 0, which evaluates, writes the artifacts and reports the result."""
        return self.rank == 0

    def describe(self) -> str:
        """Which process this is, for messages: ``rank 2 of 4 (node 1, local rank 0)``."""
        return f"rank {self.rank} of {self.world_size} (node {self.node_rank}, local rank {self.local_rank})"

    def summary(self) -> dict[str, int]:
        """What the result says of the launch."""
        return {"worldSize": self.world_size, "nodes": self.nodes, "procsPerNode": self.local_world_size}


def launch_from_env(env: Mapping[str, str]) -> DistributedLaunch | None:
    """The torchrun launch this process belongs to, or None when it trains alone (``WORLD_SIZE`` unset or 1).

    A malformed or missing torchrun variable in a distributed launch is an InvalidParameters error that
    names it.
    """
    raw_world = env.get("WORLD_SIZE", "").strip()
    if not raw_world:
        return None
    world_size = _integer(env, "WORLD_SIZE", minimum=1)
    if world_size == 1:
        return None
    missing = [name for name in _REQUIRED if not env.get(name, "").strip()]
    if missing:
        raise _invalid(
            f"WORLD_SIZE is {world_size} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
            "set: start distributed training with torchrun, which sets them"
        )
    rank = _integer(env, "RANK", minimum=0, below=world_size)
    local_world_size = _integer(env, "LOCAL_WORLD_SIZE", minimum=1, maximum=world_size)
    local_rank = _integer(env, "LOCAL_RANK", minimum=0, below=local_world_size)
    nodes = _integer(env, "GROUP_WORLD_SIZE", minimum=1, maximum=world_size, default=1)
    return DistributedLaunch(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=local_world_size,
        node_rank=_integer(env, "GROUP_RANK", minimum=0, below=max(nodes, 1), default=0),
        nodes=nodes,
        master_addr=env["MASTER_ADDR"].strip(),
        master_port=_integer(env, "MASTER_PORT", minimum=1, maximum=65_535),
        timeout_seconds=_integer(
            env, ENV_TIMEOUT, minimum=1, maximum=MAX_TIMEOUT_SECONDS, default=DEFAULT_TIMEOUT_SECONDS
        ),
    )


def refuse_unless_distributable(
    estimator: str, framework: Literal["sklearn", "pytorch"], launch: DistributedLaunch
) -> None:
    """Raise DistributedNotSupported for an estimator that cannot train across processes (scikit-learn's)."""
    if framework == "pytorch":
        return
    raise TrainerError(
        FailureReason.DISTRIBUTED_NOT_SUPPORTED,
        f"{estimator} cannot train distributed (WORLD_SIZE {launch.world_size}): only TorchMLP, "
        "TorchMLPClassifier and TorchMLPRegressor train across processes; drop spec.distributed or "
        "choose a TorchMLP estimator",
    )


@contextlib.contextmanager
def process_group(launch: DistributedLaunch | None, device: Literal["cpu", "cuda"]) -> Iterator[None]:
    """Join the launch's process group for the block (nothing without a launch) and leave it afterwards,
    also when the block raises.

    gloo on the CPU, NCCL on CUDA, where each process takes the GPU ``cuda:LOCAL_RANK``. Joining waits
    at most the launch's timeout for the other processes, and so does every collective operation,
    leaving included (see :func:`_leave_together`).
    """
    if launch is None:
        yield
        return
    import torch
    import torch.distributed as dist

    if device == "cuda":
        visible = torch.cuda.device_count()
        if launch.local_rank >= visible:
            raise TrainerError(
                FailureReason.DEVICE_UNAVAILABLE,
                f"{launch.local_world_size} processes per node need as many GPUs, but PyTorch sees "
                f"{visible}: request one GPU per process or set procsPerNode to the GPUs of a node",
            )
        torch.cuda.set_device(launch.local_rank)
    backend = "nccl" if device == "cuda" else "gloo"
    host = f"[{launch.master_addr}]" if ":" in launch.master_addr else launch.master_addr
    log.info("%s joins the %s process group at %s:%d", launch.describe(), backend, host, launch.master_port)
    try:
        dist.init_process_group(
            backend,
            init_method=f"tcp://{host}:{launch.master_port}",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=timedelta(seconds=launch.timeout_seconds),
        )
    except Exception as exc:
        raise TrainerError(
            FailureReason.TRAINING_FAILED,
            f"cannot join the {backend} process group at {host}:{launch.master_port} within "
            f"{launch.timeout_seconds} s: {type(exc).__name__}: {exc}",
        ) from exc
    try:
        yield
        _leave_together(launch, backend)
    finally:
        dist.destroy_process_group()


def _leave_together(launch: DistributedLaunch, backend: str) -> None:
    """Wait, after a block that went well, until every process of the launch has finished its own: the
    others' shares are trained before the primary evaluates, but they leave the group only once the
    primary has written the model. A process that left early closes its connections under peers that still
    hold the group, and gloo may abort such a peer's process (no exit status of its own, no message).

    A process that fails leaves at once (no wait): its peers here see their connections closed, which
    is no failure of theirs, since their own work is done; the failing process reports why."""
    import torch.distributed as dist

    try:
        if backend == "nccl":
            dist.barrier(device_ids=[launch.local_rank])
        else:
            dist.barrier()
    except Exception as exc:
        log.warning(
            "%s: not every process of the launch reached its end (%s: %s); this one's work is done",
            launch.describe(),
            type(exc).__name__,
            exc,
        )
        return
    log.info("%s leaves the %s process group with the others", launch.describe(), backend)


def _integer(
    env: Mapping[str, str],
    name: str,
    *,
    minimum: int,
    maximum: int | None = None,
    below: int | None = None,
    default: int | None = None,
) -> int:
    raw = env.get(name, "").strip()
    if not raw and default is not None:
        return default
    if not raw.isdigit():
        raise _invalid(f"{name} must be a non-negative integer, got {raw!r}")
    value = int(raw)
    if value < minimum:
        raise _invalid(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise _invalid(f"{name} must be at most {maximum}, got {value}")
    if below is not None and value >= below:
        raise _invalid(f"{name} must be below {below}, got {value}")
    return value


def _invalid(message: str) -> TrainerError:
    return TrainerError(FailureReason.INVALID_PARAMETERS, message)
