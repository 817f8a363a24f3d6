"""Distributed training under real ``torchrun`` on the CPU (gloo): what a distributed TrainingRun's pods run.

Every launch here is a real ``torchrun ... --no-python modelloop-train`` from the trainer's environment, with
the operator's ``MODELLOOP_*`` environment, as the pods get it. The launches are shared by the tests of a
module-scoped fixture: starting four PyTorch processes costs seconds on a small machine.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from modelloop_trainer.cli import run
from modelloop_trainer.distributed import launch_from_env
from modelloop_trainer.errors import TrainerError
from modelloop_trainer.progress import PROGRESS_PREFIX
from modelloop_trainer.result import write_first_message

BIN = Path(sys.executable).parent
TORCHRUN = str(BIN / "torchrun")
LAUNCH_TIMEOUT = 180
# Tolerances: a distributed run deals out the batches differently, so it is another draw of the batch
# order; it must land within the spread of 1-process runs over seeds 0-4 of the same configuration
# (digits accuracy 0.911-0.925; diabetes r2 0.303-0.352). Measured: the same accuracy, 0.9194, on 1 and
# 4 processes; r2 in the test's output.
ACCURACY_TOLERANCE = 0.02
R2_TOLERANCE = 0.05
EPOCHS = 10
CLASSIFIER = {"estimator": "TorchMLPClassifier", "epochs": EPOCHS, "batch_size": 64, "hidden_sizes": [32]}
REGRESSOR = {
    "estimator": "TorchMLPRegressor",
    "epochs": 40,
    "batch_size": 32,
    "lr": 0.003,
    "hidden_sizes": [16],
}
# torchrun's own variables: a test run must not inherit any from the shell that runs the tests.
_LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE")


@dataclass(frozen=True)
class Launch:
    """One finished ``torchrun`` agent: its exit status, output, result file and output folder."""

    returncode: int
    stdout: str
    stderr: str
    result_path: Path
    output: Path

    def result(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.result_path.read_text())
        return parsed

    def result_lines(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.startswith('{"status"')]

    def progress_lines(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.startswith(PROGRESS_PREFIX)]


def trainer_env(
    folder: Path, name: str, params: Mapping[str, Any], dataset: str = "sklearn://digits"
) -> dict[str, str]:
    """The environment of one pod: the shell's without MODELLOOP_* or torchrun variables, plus the run's."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MODELLOOP_", "PET_")) and key not in _LAUNCH_VARIABLES
    }
    return {
        **clean,
        "PATH": f"{BIN}{os.pathsep}{clean.get('PATH', '')}",
        "MODELLOOP_RUN_NAME": name,
        "MODELLOOP_MODEL_NAME": "digits",
        "MODELLOOP_DATASET_URI": dataset,
        "MODELLOOP_OUTPUT_URI": (folder / name).as_uri(),
        "MODELLOOP_RESULT_PATH": str(folder / f"{name}.termination-log"),
        "MODELLOOP_PARAMS": json.dumps({"seed": 0, **params}),
        "MODELLOOP_DEVICE": "cpu",
        # A lost peer must fail a test quickly, not after the default 10 minutes.
        "MODELLOOP_DISTRIBUTED_TIMEOUT_SECONDS": "60",
    }


def start_torchrun(env: Mapping[str, str], *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [TORCHRUN, *options, "--no-python", "modelloop-train"],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], env: Mapping[str, str]) -> Launch:
    try:
        stdout, stderr = process.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"torchrun did not finish within {LAUNCH_TIMEOUT} s:\n{stderr[-4000:]}")
    return Launch(
        process.returncode,
        stdout,
        stderr,
        Path(env["MODELLOOP_RESULT_PATH"]),
        Path(env["MODELLOOP_OUTPUT_URI"].removeprefix("file://")),
    )


def standalone(env: Mapping[str, str], processes: int) -> Launch:
    """``torchrun --standalone --nproc-per-node N``: one node."""
    return finish(start_torchrun(env, "--standalone", "--nproc-per-node", str(processes)), env)


def two_nodes(node_envs: tuple[Mapping[str, str], Mapping[str, str]]) -> tuple[Launch, Launch]:
    """Two torchrun agents on this machine, 2 processes each, configured only by PET_* as the pods are."""
    port = free_port()
    processes = []
    for node_rank, env in enumerate(node_envs):
        pet = {
            "PET_NNODES": "2",
            "PET_NPROC_PER_NODE": "2",
            "PET_NODE_RANK": str(node_rank),
            "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port),
        }
        processes.append((start_torchrun({**env, **pet}), env))
    first, second = (finish(process, env) for process, env in processes)
    return first, second


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def single_process(env: Mapping[str, str]) -> dict[str, Any]:
    """The same run in one process, without torchrun (as a single-node TrainingRun runs)."""
    assert run(env) == 0
    result: dict[str, Any] = json.loads(Path(env["MODELLOOP_RESULT_PATH"]).read_text())
    return result


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def four_processes(folder: Path) -> Launch:
    return standalone(trainer_env(folder, "four", CLASSIFIER), 4)


@pytest.fixture(scope="module")
def one_process(folder: Path) -> dict[str, Any]:
    return single_process(trainer_env(folder, "one", CLASSIFIER))


def test_four_processes_reach_the_accuracy_of_one_within_the_tolerance(
    four_processes: Launch, one_process: dict[str, Any]
) -> None:
    assert four_processes.returncode == 0, four_processes.stderr[-4000:]
    result = four_processes.result()
    assert result["status"] == "Succeeded"
    assert result["distributed"] == {"worldSize": 4, "nodes": 1, "procsPerNode": 4}
    distributed, alone = result["metrics"], one_process["metrics"]
    print(f"accuracy: 1 process {alone['accuracy']:.4f}, 4 processes {distributed['accuracy']:.4f}")
    assert distributed["accuracy"] == pytest.approx(alone["accuracy"], abs=ACCURACY_TOLERANCE)
    assert distributed["accuracy"] > 0.85  # it learned
    # Every process split the same data the same way.
    assert (distributed["n_train"], distributed["n_test"]) == (alone["n_train"], alone["n_test"])
    assert result["datasetHash"] == one_process["datasetHash"]


def test_only_rank_zero_reports_progress_and_the_result(four_processes: Launch) -> None:
    assert four_processes.returncode == 0, four_processes.stderr[-4000:]
    assert four_processes.result_lines() == [four_processes.result_path.read_text()]
    steps = [json.loads(line.split(" ", 1)[1])["step"] for line in four_processes.progress_lines()]
    assert steps == list(range(1, EPOCHS + 1))  # once per epoch, not once per process
    files = sorted(path.name for path in four_processes.output.iterdir())
    assert files == sorted(
        [
            "holdout.csv",
            "metrics.json",
            "model.json",
            "model.onnx",
            "model.pt",
            "reference.csv",
            "reference_predictions.csv",
            "result.json",
        ]
    )
    for rank in (1, 2, 3):
        assert f"rank {rank} of 4 (node 0, local rank {rank}) trained its share" in four_processes.stderr


def test_the_processes_leave_the_group_together_once_rank_zero_has_written_the_model(
    four_processes: Launch,
) -> None:
    # The others wait for the primary's evaluation and artifacts: none closes its connections under it.
    assert four_processes.returncode == 0, four_processes.stderr[-4000:]
    lines = four_processes.stderr.splitlines()
    evaluated = next(i for i, line in enumerate(lines) if " metrics: " in line)
    for rank in range(4):
        left = [
            i
            for i, line in enumerate(lines)
            if f"rank {rank} of 4 (node 0, local rank {rank}) leaves the gloo process group with the others"
            in line
        ]
        assert len(left) == 1 and left[0] > evaluated, four_processes.stderr[-4000:]


def test_two_nodes_of_two_processes_train_the_same_model_as_four_processes_on_one(
    folder: Path, four_processes: Launch
) -> None:
    node0_env = trainer_env(folder, "nodes", CLASSIFIER)
    # Node 1's pod gets its own termination message and, here, its own output folder: it must write neither.
    node1_env = {
        **node0_env,
        "MODELLOOP_RESULT_PATH": str(folder / "nodes-1.termination-log"),
        "MODELLOOP_OUTPUT_URI": (folder / "nodes-1").as_uri(),
    }
    node0, node1 = two_nodes((node0_env, node1_env))
    assert (node0.returncode, node1.returncode) == (0, 0), node0.stderr[-3000:] + node1.stderr[-3000:]
    result = node0.result()
    assert result["distributed"] == {"worldSize": 4, "nodes": 2, "procsPerNode": 2}
    # Same seed, same world size: the same weights, so the same metrics and the same ONNX bytes.
    reference = four_processes.result()
    assert {name: value for name, value in result["metrics"].items() if name != "train_seconds"} == {
        name: value for name, value in reference["metrics"].items() if name != "train_seconds"
    }
    assert result["artifactDigest"] == reference["artifactDigest"]
    assert not node1.result_path.exists()
    assert not node1.output.exists()
    assert node1.result_lines() == [] and node1.progress_lines() == []


def test_a_node_whose_processes_fail_fails_the_launch_and_explains_itself(folder: Path) -> None:
    params = {**CLASSIFIER, "epochs": 200}
    node0_env = trainer_env(folder, "broken", params)
    node1_env = {
        **trainer_env(folder, "broken-1", params, dataset=(folder / "missing.csv").as_uri()),
        "MODELLOOP_TARGET_COLUMN": "target",
    }
    node0, node1 = two_nodes((node0_env, node1_env))
    for launch in (node0, node1):
        print(launch.result_path.read_text() if launch.result_path.exists() else "no termination message")
    assert node1.returncode != 0
    assert node0.returncode != 0  # its processes lost their peers: no partial result
    failure = node1.result()
    assert failure["status"] == "Failed"
    assert failure["reason"] == "DatasetUnavailable"
    assert failure["rank"] in (2, 3)
    assert failure["message"].startswith(f"rank {failure['rank']} of 4 (node 1, local rank ")
    assert not node0.result_path.exists() or node0.result()["status"] == "Failed"
    assert not (node0.output / "model.onnx").exists()


def test_a_killed_worker_fails_the_launch_without_a_result(folder: Path) -> None:
    env = trainer_env(folder, "killed", {**CLASSIFIER, "epochs": 5000})
    process = start_torchrun(env, "--standalone", "--nproc-per-node", "4")
    try:
        assert process.stdout is not None
        first = read_line_until(process.stdout, PROGRESS_PREFIX, deadline=time.monotonic() + LAUNCH_TIMEOUT)
        assert first is not None, "the workers never reached their first epoch"
        victim = worker_with_rank(process.pid, 2)
        os.kill(victim, signal.SIGKILL)  # as the kernel's OOM killer would
        process.communicate(timeout=LAUNCH_TIMEOUT)  # reads both pipes, so that no worker blocks on them
        returncode = process.returncode
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert returncode != 0
    launch_result = Path(env["MODELLOOP_RESULT_PATH"])
    # The killed worker wrote nothing; a peer that lost it may have explained itself; nobody succeeded.
    if launch_result.exists():
        failure = json.loads(launch_result.read_text())
        assert failure["status"] == "Failed" and failure["rank"] != 2
    assert not (folder / "killed" / "model.onnx").exists()


def read_line_until(stream: IO[str], prefix: str, *, deadline: float) -> str | None:
    """The first line of ``stream`` starting with ``prefix``; None at its end or at ``deadline``."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(timeout=left):
                continue
            line = stream.readline()
            if not line:
                return None
            if line.startswith(prefix):
                return line
    return None


def worker_with_rank(agent: int, rank: int) -> int:
    """The process id of the torchrun agent ``agent``'s worker whose RANK is ``rank`` (read from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        if parent == agent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"torchrun {agent} has no worker of rank {rank}")


def test_a_scikit_learn_estimator_refuses_to_train_distributed(folder: Path) -> None:
    env = trainer_env(folder, "forest", {"estimator": "RandomForestClassifier", "n_estimators": 5})
    launch = standalone(env, 2)
    assert launch.returncode != 0
    failure = launch.result()
    assert failure["reason"] == "DistributedNotSupported"
    assert "RandomForestClassifier" in failure["message"]
    assert "only TorchMLP" in failure["message"]
    assert failure["message"].startswith(
        f"rank {failure['rank']} of 2 (node 0, local rank {failure['rank']})"
    )
    # No artifacts. Rank 0 keeps its failed result beside where they would be, as a single process does, when
    # it refuses first; when rank 1 refuses first, torchrun stops rank 0, which may not have written yet, and
    # then the folder is never made (a run of the checks niced beside the e2e suite found no folder).
    kept = sorted(path.name for path in launch.output.iterdir()) if launch.output.exists() else []
    assert kept in ([], ["result.json"])


def test_a_regressor_on_two_processes_reaches_the_r2_of_one(folder: Path) -> None:
    env = trainer_env(folder, "regressor", REGRESSOR, dataset="sklearn://diabetes")
    alone = single_process(trainer_env(folder, "regressor-one", REGRESSOR, dataset="sklearn://diabetes"))
    launch = standalone(env, 2)
    assert launch.returncode == 0, launch.stderr[-4000:]
    distributed = launch.result()["metrics"]
    print(f"r2: 1 process {alone['metrics']['r2']:.4f}, 2 processes {distributed['r2']:.4f}")
    assert distributed["r2"] == pytest.approx(alone["metrics"]["r2"], abs=R2_TOLERANCE)
    assert distributed["r2"] > 0.25


# -- the launch contract, without torchrun ------------------------------------------------------------


def torchrun_variables(**overrides: str) -> dict[str, str]:
    variables = {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2",
        "MASTER_ADDR": "trainer-0.trainer",
        "MASTER_PORT": "29500",
    }
    return {**variables, **overrides}


def test_a_launch_of_several_processes_is_read_from_torchruns_variables() -> None:
    launch = launch_from_env(torchrun_variables())
    assert launch is not None
    assert (launch.rank, launch.world_size, launch.local_rank, launch.node_rank, launch.nodes) == (
        3,
        4,
        1,
        1,
        2,
    )
    assert (launch.master_addr, launch.master_port, launch.timeout_seconds) == (
        "trainer-0.trainer",
        29500,
        600,
    )
    assert not launch.is_primary
    assert launch.describe() == "rank 3 of 4 (node 1, local rank 1)"


@pytest.mark.parametrize("env", [{}, {"WORLD_SIZE": "1", "RANK": "0"}], ids=["no torchrun", "one process"])
def test_one_process_is_not_a_distributed_launch(env: dict[str, str]) -> None:
    assert launch_from_env(env) is None


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"RANK": ""}, "RANK"),
        ({"RANK": "4"}, "RANK"),
        ({"WORLD_SIZE": "four"}, "WORLD_SIZE"),
        ({"LOCAL_RANK": "2"}, "LOCAL_RANK"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT"),
        ({"MODELLOOP_DISTRIBUTED_TIMEOUT_SECONDS": "0"}, "MODELLOOP_DISTRIBUTED_TIMEOUT_SECONDS"),
    ],
)
def test_a_malformed_launch_is_refused_naming_the_variable(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(TrainerError) as raised:
        launch_from_env(torchrun_variables(**overrides))
    assert raised.value.reason == "InvalidParameters"
    assert raised.value.message.startswith(named) or f" {named} " in raised.value.message


def test_the_first_failure_written_to_a_shared_termination_message_stays(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    path.write_text("")  # what Kubernetes creates before the container starts
    assert write_first_message(str(path), '{"status":"Failed","message":"rank 2 of 4: the cause"}')
    assert not write_first_message(str(path), '{"status":"Failed","message":"rank 3 of 4: lost its peer"}')
    assert json.loads(path.read_text())["message"] == "rank 2 of 4: the cause"
