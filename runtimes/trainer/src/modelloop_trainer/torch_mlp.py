"""TorchMLP: a multi-layer perceptron in PyTorch, as a scikit-learn style estimator.

It runs on CUDA when it is given ``device="cuda"`` and on the CPU otherwise, and it is
deterministic for a given seed on either. PyTorch is imported only when a TorchMLP is
actually fitted or loaded, so the scikit-learn path never pays for it. A fitted one is
exported to ONNX (:meth:`TorchMLP.onnx_bytes`) for the model servers, which run it with
onnxruntime.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from modelloop_contracts import (
    ONNX_CLASS_OUTPUT,
    ONNX_FORMAT,
    ONNX_INPUT,
    ONNX_MANIFEST_KEY,
    ONNX_PROBABILITIES_OUTPUT,
    ONNX_VALUE_OUTPUT,
    TORCH_ARCHITECTURE_FORMAT,
)
from sklearn.base import BaseEstimator

from modelloop_trainer.distributed import DistributedLaunch

if TYPE_CHECKING:
    import torch

_PREDICT_CHUNK = 65536
# Eager steps before a CUDA graph is captured: they initialize cuBLAS and the optimizer's state.
_GRAPH_WARMUP_STEPS = 3
# The ONNX opset of model.onnx: one that the oldest onnxruntime of the model servers reads (the Seldon
# server's 1.26, which seldon-core's protobuf < 4 holds back).
ONNX_OPSET = 20


def torch_installed() -> bool:
    """Whether PyTorch can be imported here."""
    return importlib.util.find_spec("torch") is not None


def cuda_available() -> bool:
    """Whether PyTorch is installed and sees a CUDA device."""
    if not torch_installed():
        return False
    import torch

    return bool(torch.cuda.is_available())


def torch_version() -> str:
    """The installed PyTorch's version."""
    import torch

    return str(torch.__version__)


class TorchMLP(BaseEstimator):  # type: ignore[misc]
    """An MLP classifier (cross-entropy) or regressor (mean squared error, standardized target).

    Missing feature values are filled with the training medians and features are standardized
    with the training means and deviations; both are part of the saved model.
    """

    def __init__(
        self,
        task: str = "classification",
        hidden_sizes: Sequence[int] = (64, 64),
        epochs: int = 20,
        lr: float = 1e-3,
        batch_size: int = 128,
        weight_decay: float = 0.0,
        seed: int = 0,
        device: str = "cpu",
        cuda_graph: bool = True,
    ) -> None:
        self.task = task
        self.hidden_sizes = hidden_sizes
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.seed = seed
        self.device = device
        self.cuda_graph = cuda_graph

    def check_params(self) -> None:
        """Raise ValueError naming the first parameter that cannot work."""
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be classification or regression, got {self.task!r}")
        sizes = self.hidden_sizes
        if not isinstance(sizes, list | tuple) or not all(_positive_int(size) for size in sizes):
            raise ValueError(f"hidden_sizes must be a list of positive integers, got {sizes!r}")
        if not _positive_int(self.epochs):
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not _positive_int(self.batch_size):
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not _positive_number(self.lr):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (_positive_number(self.weight_decay) or self.weight_decay == 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if not isinstance(self.cuda_graph, bool):
            raise ValueError(f"cuda_graph must be true or false, got {self.cuda_graph!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")

    # -- training ---------------------------------------------------------------------------------

    def fit(
        self,
        features: Any,
        target: Any,
        on_epoch: Callable[[int], None] | None = None,
        distributed: DistributedLaunch | None = None,
    ) -> TorchMLP:
        """Train from scratch on ``features`` (rows x columns) and ``target``.

        ``on_epoch(epoch)`` (from 1) is called after each epoch; it may predict (see :meth:`predictor`),
        which changes neither the weights nor the random streams of the training.

        With ``distributed`` (a process of a torchrun launch, its process group joined), every process
        is given all the rows and computes the same fill values, standardization and label encoding from
        them; the network trains wrapped in DistributedDataParallel, each epoch's rows shuffled by a
        DistributedSampler (seeded with ``seed``, ``set_epoch`` each epoch) and dealt out among the
        processes. ``batch_size`` is the global batch: each process takes ``ceil(batch_size /
        world_size)`` rows a step and the gradients are averaged over the processes, so a step moves the
        weights as one step of a single process would, and an epoch has as many steps. Every process
        ends with the same weights. CUDA graphs are not used.
        """
        import torch

        self.check_params()
        _make_deterministic(self.device)
        torch.manual_seed(self.seed)
        x = _as_matrix(features)
        self.feature_names_ = [str(name) for name in getattr(features, "columns", range(x.shape[1]))]
        self.fill_ = np.nan_to_num(_nanmedian(x), nan=0.0).astype(np.float32)
        x = np.where(np.isnan(x), self.fill_, x)
        self.mean_ = x.mean(axis=0).astype(np.float32)
        std = x.std(axis=0)
        self.std_ = np.where(std > 0, std, 1.0).astype(np.float32)
        x = (x - self.mean_) / self.std_

        labels = np.asarray(target)
        if self.task == "classification":
            self.classes_, encoded = np.unique(labels, return_inverse=True)
            y = torch.as_tensor(encoded, dtype=torch.long)
            n_outputs = len(self.classes_)
            loss_fn: torch.nn.Module = torch.nn.CrossEntropyLoss()
        else:
            values = labels.astype(np.float64)
            self.y_mean_, self.y_std_ = float(values.mean()), float(values.std() or 1.0)
            y = torch.as_tensor((values - self.y_mean_) / self.y_std_, dtype=torch.float32).unsqueeze(1)
            n_outputs = 1
            loss_fn = torch.nn.MSELoss()

        device = torch.device(self.device)
        self.network_ = _network(x.shape[1], list(self.hidden_sizes), n_outputs).to(device)
        inputs, outputs = torch.as_tensor(x, dtype=torch.float32).to(device), y.to(device)
        on_cuda = device.type == "cuda"
        # On CUDA, Adam runs as one fused kernel whose state stays on the device, so that a whole
        # training step can be captured in a CUDA graph.
        optimizer = torch.optim.Adam(
            self.network_.parameters(),
            lr=self.lr,
            weight_decay=self.weight_decay,
            fused=True if on_cuda else None,
            capturable=on_cuda,
        )
        total = torch.zeros((), device=device)
        self.epoch_seconds_: list[float] = []
        self.loss_history_: list[float] = []
        self.graph_replays_ = 0
        if distributed is not None:
            self._fit_distributed(distributed, loss_fn, optimizer, inputs, outputs, total, on_epoch)
            return self
        step = _TrainingStep(self.network_, loss_fn, optimizer, inputs, outputs, total)
        full_batches = len(inputs) // self.batch_size
        use_graph = on_cuda and self.cuda_graph and full_batches * self.epochs > _GRAPH_WARMUP_STEPS + 1
        graph: _GraphedStep | None = None
        # Batches are drawn on the CPU so that CPU and CUDA runs see the same batches.
        order = torch.Generator().manual_seed(self.seed)
        warm_up_steps = 0
        self.network_.train()
        for epoch in range(1, self.epochs + 1):
            started = time.perf_counter()
            permutation = torch.randperm(len(inputs), generator=order).to(device)
            total.zero_()
            for start in range(0, len(inputs), self.batch_size):
                batch = permutation[start : start + self.batch_size]
                if not use_graph or len(batch) < self.batch_size:
                    step(batch)
                elif warm_up_steps < _GRAPH_WARMUP_STEPS:
                    step.on_side_stream(batch)
                    warm_up_steps += 1
                else:
                    if graph is None:
                        graph = _GraphedStep(step, self.batch_size)
                    graph(batch)
                    self.graph_replays_ += 1
            self.loss_history_.append(float(total) / len(inputs))  # float() waits for the device
            self.epoch_seconds_.append(time.perf_counter() - started)
            if on_epoch is not None:
                on_epoch(epoch)  # Linear and ReLU only: training and evaluation mode compute the same
        self.network_.eval()
        return self

    def _fit_distributed(
        self,
        launch: DistributedLaunch,
        loss_fn: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        inputs: torch.Tensor,
        outputs: torch.Tensor,
        total: torch.Tensor,
        on_epoch: Callable[[int], None] | None,
    ) -> None:
        """The epochs of :meth:`fit` in one process of a launch: DistributedDataParallel, each process on
        its share of every epoch's rows (see :meth:`fit`)."""
        import torch
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DistributedSampler, TensorDataset

        on_cuda = inputs.device.type == "cuda"
        # DDP makes every process start from rank 0's weights (they are equal anyway: same seed).
        parallel = DistributedDataParallel(
            self.network_, device_ids=[inputs.device.index] if on_cuda else None
        )
        step = _TrainingStep(parallel, loss_fn, optimizer, inputs, outputs, total)
        # Every process takes the same number of rows a step: the sampler pads each epoch's rows to a
        # multiple of world_size (repeating a few), so all of them take the same number of steps.
        sampler: DistributedSampler[int] = DistributedSampler(
            TensorDataset(torch.arange(len(inputs))),
            num_replicas=launch.world_size,
            rank=launch.rank,
            shuffle=True,
            seed=self.seed,
            drop_last=False,
        )
        local_batch = -(-self.batch_size // launch.world_size)
        self.network_.train()
        for epoch in range(1, self.epochs + 1):
            started = time.perf_counter()
            sampler.set_epoch(epoch)
            share = torch.as_tensor(list(sampler), dtype=torch.long).to(inputs.device)
            total.zero_()
            for start in range(0, len(share), local_batch):
                step(share[start : start + local_batch])
            self.loss_history_.append(float(total) / max(len(share), 1))  # this process's rows
            self.epoch_seconds_.append(time.perf_counter() - started)
            if on_epoch is not None:
                on_epoch(epoch)
        self.network_.eval()

    # -- prediction -------------------------------------------------------------------------------

    def _input_chunks(self, features: Any) -> Iterator[torch.Tensor]:
        """The rows filled and standardized, on the network's device, in chunks of _PREDICT_CHUNK rows."""
        import torch

        x = _as_matrix(features)
        x = (np.where(np.isnan(x), self.fill_, x) - self.mean_) / self.std_
        device = next(self.network_.parameters()).device
        for start in range(0, len(x), _PREDICT_CHUNK):
            yield torch.as_tensor(x[start : start + _PREDICT_CHUNK], dtype=torch.float32, device=device)

    def _scores(self, chunks: Iterable[torch.Tensor]) -> np.ndarray:
        import torch

        with torch.no_grad():
            outputs = [self.network_(part).cpu().numpy() for part in chunks]
        return np.concatenate(outputs) if outputs else np.empty((0, 1), dtype=np.float32)

    def _labels(self, scores: np.ndarray) -> np.ndarray:
        if self.task == "classification":
            return np.asarray(self.classes_[scores.argmax(axis=1)])
        return scores[:, 0].astype(np.float64) * self.y_std_ + self.y_mean_

    def _probabilities(self, scores: np.ndarray) -> np.ndarray:
        if self.task != "classification":
            raise AttributeError("predict_proba is only available for classification")
        scores = scores.astype(np.float64)
        scores -= scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True))

    def predict(self, features: Any) -> np.ndarray:
        """Class labels (classification) or values (regression)."""
        return self._labels(self._scores(self._input_chunks(features)))

    def predict_proba(self, features: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        if self.task != "classification":
            raise AttributeError("predict_proba is only available for classification")
        return self._probabilities(self._scores(self._input_chunks(features)))

    def predictor(
        self, features: Any, *, probabilities: bool = False
    ) -> Callable[[], tuple[np.ndarray, np.ndarray | None]]:
        """A function that returns what ``predict`` (and ``predict_proba``) return for ``features`` with
        the current weights. The rows are prepared once, so a call costs one forward pass: for
        evaluating after each epoch (from ``fit``'s ``on_epoch``, which may create it too)."""
        chunks = list(self._input_chunks(features))

        def current() -> tuple[np.ndarray, np.ndarray | None]:
            scores = self._scores(chunks)
            return self._labels(scores), self._probabilities(scores) if probabilities else None

        return current

    # -- artifacts --------------------------------------------------------------------------------

    def architecture(self) -> dict[str, Any]:
        """What it takes to rebuild the network: the JSON written next to the weights."""
        architecture: dict[str, Any] = {
            "format": TORCH_ARCHITECTURE_FORMAT,
            "task": self.task,
            "n_features": len(self.feature_names_),
            "feature_names": self.feature_names_,
            "hidden_sizes": [int(size) for size in self.hidden_sizes],
            "n_outputs": len(self.classes_) if self.task == "classification" else 1,
            "activation": "relu",
            "torch_version": torch_version(),
        }
        if self.task == "classification":
            architecture["classes"] = [_json_scalar(label) for label in self.classes_]
        else:
            architecture["target_mean"], architecture["target_std"] = self.y_mean_, self.y_std_
        return architecture

    def weights_bytes(self) -> bytes:
        """The network's weights and the input preprocessing, as ``torch.save`` bytes (tensors only)."""
        import torch

        state = {name: tensor.detach().cpu() for name, tensor in self.network_.state_dict().items()}
        for name in ("fill_", "mean_", "std_"):
            state[f"preprocess.{name.rstrip('_')}"] = torch.as_tensor(getattr(self, name))
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    def onnx_bytes(self) -> bytes:
        """The fitted model as ONNX (``model.onnx``, see ``modelloop_contracts.layout``): the input's fill
        and standardization, the network, and the outputs that :meth:`predict` derives its answers from,
        with the model's manifest in its metadata. The batch dimension is dynamic.

        Exported with ``torch.onnx.export`` from a copy of the network on the CPU; the export's own
        metadata (its nodes' stack traces, which name this file's path) is left out, so the bytes depend
        only on the model and the versions of PyTorch and its exporter (onnx, onnxscript).
        """
        import torch

        graph, outputs = _serving_graph(self)
        example = torch.zeros(2, len(self.feature_names_), dtype=torch.float32)
        # The exporter and its optimizer log what they do (and that torchvision's operators are not there)
        # and may print to stdout, which holds the trainer's progress lines and result only: for a model
        # that exports, they say nothing of use. A model that does not raises.
        with _quiet("torch.onnx", "onnxscript", "onnx_ir"), contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(
                graph,
                (example,),
                input_names=[ONNX_INPUT],
                output_names=list(outputs),
                dynamic_shapes={"features": {0: torch.export.Dim("batch")}},
                opset_version=ONNX_OPSET,
                dynamo=True,
                verbose=False,
            )
        if program is None:
            raise RuntimeError("torch.onnx.export returned no ONNX program")
        model = program.model_proto
        graph_proto = model.graph
        for items in (graph_proto.node, graph_proto.input, graph_proto.output, graph_proto.value_info):
            for item in items:
                del item.metadata_props[:]
        del model.metadata_props[:]
        model.metadata_props.add(
            key=ONNX_MANIFEST_KEY, value=json.dumps(self.onnx_manifest(), sort_keys=True)
        )
        payload: bytes = model.SerializeToString()
        return payload

    def onnx_manifest(self) -> dict[str, Any]:
        """What ``model.onnx``'s metadata says of the model: its format, task, features and classes."""
        manifest: dict[str, Any] = {
            "format": ONNX_FORMAT,
            "task": self.task,
            "feature_names": list(self.feature_names_),
        }
        if self.task == "classification":
            manifest["classes"] = [_json_scalar(label) for label in self.classes_]
        return manifest


class _TrainingStep:
    """One optimizer step on the rows ``index`` selects; the loss, times the rows, adds to ``total``."""

    def __init__(
        self,
        network: torch.nn.Module,
        loss_fn: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        inputs: torch.Tensor,
        outputs: torch.Tensor,
        total: torch.Tensor,
    ) -> None:
        self.network, self.loss_fn, self.optimizer = network, loss_fn, optimizer
        self.inputs, self.outputs, self.total = inputs, outputs, total

    def __call__(self, index: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.network(self.inputs[index]), self.outputs[index])
        loss.backward()
        self.optimizer.step()
        self.total += loss.detach() * len(index)

    def on_side_stream(self, index: torch.Tensor) -> None:
        """An eager step on a side stream: the warm-up that CUDA graph capture requires."""
        import torch

        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self(index)
        torch.cuda.current_stream().wait_stream(side)


class _GraphedStep:
    """A training step captured once as a CUDA graph and replayed for every full batch.

    A small MLP's step is a few dozen tiny kernels, so launching them one by one from Python
    costs more than running them; one graph launch per step removes that overhead. The graph
    runs the very same kernels, so results stay deterministic.
    """

    def __init__(self, step: _TrainingStep, batch_size: int) -> None:
        import torch

        self.index = torch.zeros(batch_size, dtype=torch.long, device=step.inputs.device)
        step.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step(self.index)

    def __call__(self, index: torch.Tensor) -> None:
        self.index.copy_(index)
        self.graph.replay()


def load_torch_mlp(weights: bytes, architecture: dict[str, Any]) -> TorchMLP:
    """Rebuild a fitted TorchMLP (on the CPU) from :meth:`TorchMLP.weights_bytes` and its architecture."""
    import torch

    if architecture.get("format") != TORCH_ARCHITECTURE_FORMAT:
        raise ValueError(f"not a {TORCH_ARCHITECTURE_FORMAT} architecture: {architecture.get('format')!r}")
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    model = TorchMLP(task=architecture["task"], hidden_sizes=architecture["hidden_sizes"])
    model.feature_names_ = list(architecture["feature_names"])
    for name in ("fill", "mean", "std"):
        setattr(model, f"{name}_", state.pop(f"preprocess.{name}").numpy())
    model.network_ = _network(
        architecture["n_features"], architecture["hidden_sizes"], architecture["n_outputs"]
    )
    model.network_.load_state_dict(state)
    model.network_.eval()
    if model.task == "classification":
        model.classes_ = np.asarray(architecture["classes"])
    else:
        model.y_mean_, model.y_std_ = architecture["target_mean"], architecture["target_std"]
    return model


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Only errors from ``loggers`` (and their children), and no Python warnings, while in the block."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _serving_graph(model: TorchMLP) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """What ``model.onnx`` computes, as a module on the CPU, and the names of its outputs in order.

    The same steps as :meth:`TorchMLP.predict`, in the same precision: the rows' missing values filled and
    the rows standardized in float32, the network, then a classifier's index of its largest score (the
    first on a tie, as numpy's argmax) and its probabilities, or a regressor's standardized output scaled
    back to the target's units in float64.
    """
    import torch

    network = copy.deepcopy(model.network_).cpu().eval()
    fill, mean, std = (
        torch.as_tensor(value, dtype=torch.float32) for value in (model.fill_, model.mean_, model.std_)
    )
    classifier = model.task == "classification"
    target_mean, target_std = (0.0, 1.0) if classifier else (float(model.y_mean_), float(model.y_std_))

    class ServingGraph(torch.nn.Module):
        fill: torch.Tensor
        mean: torch.Tensor
        std: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.network = network
            self.register_buffer("fill", fill)
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
            x = (torch.where(torch.isnan(features), self.fill, features) - self.mean) / self.std
            scores = self.network(x)
            if classifier:
                return scores.argmax(dim=1), torch.softmax(scores, dim=1)
            return (scores[:, 0].to(torch.float64) * target_std + target_mean,)

    outputs = (ONNX_CLASS_OUTPUT, ONNX_PROBABILITIES_OUTPUT) if classifier else (ONNX_VALUE_OUTPUT,)
    return ServingGraph().eval(), outputs


def _network(n_features: int, hidden_sizes: list[int], n_outputs: int) -> torch.nn.Sequential:
    import torch

    layers: list[torch.nn.Module] = []
    width = n_features
    for size in hidden_sizes:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
        width = size
    layers.append(torch.nn.Linear(width, n_outputs))
    return torch.nn.Sequential(*layers)


def _make_deterministic(device: str) -> None:
    import torch

    if device == "cuda":
        # cuBLAS needs a fixed workspace to be deterministic; it must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(True)


def _as_matrix(features: Any) -> np.ndarray:
    return np.asarray(features, dtype=np.float32)


def _nanmedian(x: np.ndarray) -> np.ndarray:
    """Per-column medians of the present values; NaN for a column with none."""
    if len(x) == 0:
        return np.full(x.shape[1], np.nan, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-missing columns: filled with 0 by the caller
        return np.asarray(np.nanmedian(x, axis=0), dtype=np.float32)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _json_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
