"""The frameworks compared by ``train_throughput.py``, behind one small adapter interface.

Every adapter trains the same dense ReLU network (``widths``, e.g. 784-512-512-10) with
softmax cross-entropy (mean over the batch), forward + loss + backward + optimizer step
per batch, on batches of a fresh shuffle of the data each epoch::

    peer = TorchPeer(widths, seed=0)
    peer.setup("sgd", np.float32)      # fresh model and optimizer
    peer.train(X, y, batch_size)       # one epoch over (X, y)
    peer.loss(X, y)                    # mean cross-entropy, no training
    peer.evaluate(X, y)                # {"loss", "accuracy"}, no training
    peer.train_curve(X, y, X_val, y_val, batch_size, epochs)  # time to accuracy

``setup(name, dtype, lr=...)`` overrides a hyper-parameter of ``OPTIMIZERS[name]``.
GpunetPeer and TorchPeer take ``device`` ("cpu", "cuda", "cuda:N"): the model and the
data (copied there once) live on it, and ``train`` returns after the device finished.

gpunet, PyTorch and the plain NumPy MLP start from the same initial weights
(``init_params``: PyTorch's ``nn.Linear`` default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
weights and biases); scikit-learn uses its own (Glorot) initialisation.

``NumpyMLP`` is the plain NumPy implementation: what a person writes without a framework.
"""

from __future__ import annotations

import numpy as np

# optimizer name -> hyper-parameters, the same for every framework
OPTIMIZERS = {
    "sgd": {"lr": 0.01, "momentum": 0.9},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8},
}


def init_params(widths, seed: int, dtype=np.float32):
    """``[(W (out, in), b (out,))]`` per layer, drawn like ``torch.nn.Linear`` does."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        bound = 1.0 / np.sqrt(fan_in)
        W = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(dtype)
        b = rng.uniform(-bound, bound, fan_out).astype(dtype)
        params.append((W, b))
    return params


# --------------------------------------------------------------------------- NumPy
class NumpyMLP:
    """A dense ReLU network trained with softmax cross-entropy in plain NumPy.

    Parameters are ``[W, b]`` pairs (W is (out, in)); ``train_step`` does the forward
    pass, the loss, backpropagation and an SGD-with-momentum or Adam update with
    PyTorch's update rules (momentum ``buf = m*buf + g; p -= lr*buf``; Adam with bias
    correction). No gradient is computed for the input.
    """

    def __init__(
        self,
        params,
        optimizer: str,
        lr: float,
        momentum: float = 0.9,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.params = [[W.copy(), b.copy()] for W, b in params]
        self.optimizer, self.lr, self.momentum = optimizer, lr, momentum
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.t = 0
        self.m = [[np.zeros_like(p) for p in pair] for pair in self.params]
        self.v = [[np.zeros_like(p) for p in pair] for pair in self.params]

    def forward(self, x):
        """Activations of every layer, input first; the last entry is the logits."""
        acts = [x]
        last = len(self.params) - 1
        for k, (W, b) in enumerate(self.params):
            z = acts[-1] @ W.T + b
            acts.append(np.maximum(z, 0) if k < last else z)
        return acts

    @staticmethod
    def log_softmax(logits):
        z = logits - logits.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def loss(self, x, y) -> float:
        logp = self.log_softmax(self.forward(x)[-1])
        return float(-logp[np.arange(len(y)), y].mean())

    def train_step(self, x, y) -> float:
        """One optimizer step on the batch (x, y); returns the batch's mean loss."""
        n = len(y)
        rows = np.arange(n)
        acts = self.forward(x)
        logp = self.log_softmax(acts[-1])
        loss = -logp[rows, y].mean()
        dz = np.exp(logp)  # d(mean CE)/d(logits) = (softmax - onehot) / n
        dz[rows, y] -= 1
        dz /= n
        grads = [None] * len(self.params)
        for k in range(len(self.params) - 1, -1, -1):
            W = self.params[k][0]
            grads[k] = (dz.T @ acts[k], dz.sum(axis=0))
            if k > 0:
                dz = (dz @ W) * (acts[k] > 0)
        self.update(grads)
        return float(loss)

    def update(self, grads):
        """Apply SGD with momentum or Adam in place."""
        if self.optimizer == "sgd":
            for pair, bufs, gpair in zip(self.params, self.m, grads):
                for p, buf, g in zip(pair, bufs, gpair):
                    buf *= self.momentum  # buffers start at 0, so step 1 gives buf = g
                    buf += g
                    p -= self.lr * buf
            return
        self.t += 1
        c1 = 1 - self.beta1**self.t
        c2 = 1 - self.beta2**self.t
        for pair, ms, vs, gpair in zip(self.params, self.m, self.v, grads):
            for p, m, v, g in zip(pair, ms, vs, gpair):
                m *= self.beta1
                m += (1 - self.beta1) * g
                v *= self.beta2
                v += (1 - self.beta2) * g * g
                p -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


def _append(curve: dict, epoch: int, seconds: float, metrics: dict) -> None:
    curve["epoch"].append(epoch)
    curve["seconds"].append(seconds)
    curve["val_loss"].append(float(metrics["loss"]))
    curve["val_accuracy"].append(float(metrics["accuracy"]))


def quiet_evaluate(peer, X, y) -> dict:
    """``peer.evaluate(X, y)`` with the BLAS and OpenMP pools on one thread: an untimed
    evaluation between timed epochs leaves no pool threads spin-waiting on the cores
    the next epoch needs."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    with threadpool_limits(1):
        return peer.evaluate(X, y)


def _cross_entropy(log_proba, y) -> dict:
    """Loss and accuracy from (N, classes) log-probabilities and (N,) labels."""
    return {
        "loss": float(-log_proba[np.arange(len(y)), y].mean()),
        "accuracy": float((log_proba.argmax(axis=1) == y).mean()),
    }


# ------------------------------------------------------------------------ adapters
class Peer:
    """Adapter base: ``setup(optimizer_name, dtype)``, ``train(X, y, batch_size)``,
    ``loss(X, y)``. ``key`` is the command-line name, ``label`` the table name."""

    key = label = "?"
    device = "cpu"
    threads: int | None = None

    def __init__(self, widths, seed: int = 0):
        self.widths, self.seed = list(widths), seed
        self.epoch = 0
        self.hyper: dict = {}

    @staticmethod
    def unavailable() -> str | None:
        """None if the framework can run here, else why not."""
        return None

    def supports(self, batch_size: int, n_samples: int) -> bool:
        return True

    def info(self) -> dict:
        """Facts about this run worth recording (engine, threads, ...)."""
        return {}

    def setup(self, optimizer_name: str, dtype, **hyper) -> None:
        """A fresh model (from ``init_params``) and optimizer; restarts the epoch count,
        so every peer then sees the same sequence of shuffles. ``hyper`` overrides
        ``OPTIMIZERS[optimizer_name]`` (e.g. ``lr=0.1``); ``build`` reads ``self.hyper``."""
        self.epoch = 0
        self.hyper = {**OPTIMIZERS[optimizer_name], **hyper}
        self.build(optimizer_name, dtype)

    def build(self, optimizer_name: str, dtype) -> None:
        raise NotImplementedError

    def train(self, X, y, batch_size: int) -> None:
        """One epoch over (X, y) in shuffled batches of ``batch_size``."""
        raise NotImplementedError

    def loss(self, X, y) -> float:
        """Mean cross-entropy of the current model on (X, y)."""
        return self.evaluate(X, y)["loss"]

    def evaluate(self, X, y) -> dict:
        """``{"loss": mean cross-entropy, "accuracy": fraction correct}`` on (X, y)."""
        raise NotImplementedError

    def train_curve(self, X, y, X_val, y_val, batch_size: int, epochs: int) -> dict:
        """Train ``epochs`` epochs, evaluating on (X_val, y_val) after each.

        Returns ``{"epoch": [1..epochs], "seconds": [training seconds so far, after
        each epoch], "val_loss": [...], "val_accuracy": [...]}``: only ``train`` calls
        are timed (on the peer's device), not the evaluations.
        """
        from gpunet.bench.timing import seconds_of  # noqa: PLC0415

        curve = {"epoch": [], "seconds": [], "val_loss": [], "val_accuracy": []}
        total = 0.0
        for epoch in range(1, epochs + 1):
            total += seconds_of(lambda: self.train(X, y, batch_size), self.device)
            _append(curve, epoch, total, quiet_evaluate(self, X_val, y_val))
        return curve

    def _limit_threads(self) -> None:
        """With ``threads`` set (NumPy, scikit-learn), limit the process's BLAS and OpenMP
        pools to that many threads, before training (peers of one process take turns)."""
        if self.threads is not None:
            from gpunet.parallel import blas_controller  # noqa: PLC0415

            blas_controller().limit(limits=self.threads)  # stays in force (no context)

    def _order(self, n: int):
        """The next epoch's shuffle: the permutation gpunet's ``fit(seed=epoch)`` uses."""
        self.epoch += 1
        return np.random.default_rng(self.epoch).permutation(n)


class GpunetPeer(Peer):
    """gpunet's ``Trainer.fit``, one epoch per ``train`` call.

    ``engine``: ``"fused"`` (what None, the default, runs, keyed "gpunet"),
    ``"autograd"``, or ``"auto"`` (which times both at the start of every fit, so
    per-epoch rows measure its choice plus that probe); ``device``: where the model and
    the data live; ``threads``: passed to ``gpunet.set_num_threads`` before training
    (None: gpunet's default, ``gpunet.get_num_threads()``)."""

    key, label = "gpunet", "gpunet"

    def __init__(
        self,
        widths,
        seed: int = 0,
        flush_denormals: bool = True,
        engine: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
    ):
        super().__init__(widths, seed)
        self.flush_denormals, self.device = flush_denormals, device
        self.engine = engine or "fused"
        self.threads = threads
        tags = [] if engine is None else [engine]
        if not flush_denormals:
            tags.append("flush_denormals=False")
            self.key = "gpunet-noflush"
        if engine is not None:
            self.key = f"gpunet-{engine}"
        self.label = "gpunet" + (f" ({', '.join(tags)})" if tags else "")
        self._on_device = DeviceCache(device, _to_cupy)

    def build(self, optimizer_name, dtype):
        import gpunet  # noqa: PLC0415
        from gpunet import nn, optim  # noqa: PLC0415
        from gpunet.backend import jit_cache  # noqa: PLC0415
        from gpunet.train import Trainer  # noqa: PLC0415

        # a benchmark times compiled kernels: compile what is missing now, in this process
        # (not NumPy's ops while a background process compiles)
        jit_cache.set_compile_mode("foreground")

        gpunet.manual_seed(self.seed)
        last = len(self.widths) - 2
        layers = [
            nn.Dense(i, o, "relu" if k < last else "linear", dtype=dtype, device=self.device)
            for k, (i, o) in enumerate(zip(self.widths[:-1], self.widths[1:]))
        ]
        to_device = (lambda A: A) if self.device == "cpu" else _to_cupy
        for layer, (W, b) in zip(layers, init_params(self.widths, self.seed, dtype)):
            layer.weight.data[...] = to_device(W)
            layer.bias.data[...] = to_device(b)
        self.model = nn.Sequential(*layers)
        make = optim.SGD if optimizer_name == "sgd" else optim.Adam
        self.trainer = Trainer(
            self.model,
            nn.CrossEntropyLoss(),
            make(self.model.parameters(), **self.hyper),
            progress=False,
            verbose=0,
            engine=self.engine,
            flush_denormals=self.flush_denormals,
        )

    def _set_threads(self) -> None:
        """Apply ``threads`` before training (peers of one process take turns)."""
        import gpunet  # noqa: PLC0415

        if self.threads is not None:
            gpunet.set_num_threads(self.threads)

    def train(self, X, y, batch_size):
        self.epoch += 1
        X, y = self._on_device(X), self._on_device(y)
        self._set_threads()
        self.trainer.fit(X, y, epochs=1, batch_size=batch_size, shuffle=True, seed=self.epoch)

    def evaluate(self, X, y):
        metrics = self.trainer.evaluate(self._on_device(X), self._on_device(y))
        return {"loss": float(metrics["loss"]), "accuracy": float(metrics["accuracy"])}

    def train_curve(self, X, y, X_val, y_val, batch_size, epochs):
        """One ``fit`` of ``epochs`` epochs; a callback takes each epoch's training
        seconds (``on_epoch_begin`` to ``on_epoch_end``, the device synchronised) and
        then evaluates, outside the timed span."""
        from gpunet.train.callbacks import Callback  # noqa: PLC0415

        curve = {"epoch": [], "seconds": [], "val_loss": [], "val_accuracy": []}
        peer, device = self, self.device

        class Clock(Callback):
            total = 0.0

            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = _clock(device)

            def on_epoch_end(self, epoch, logs=None):
                self.total += _clock(device) - self.t0
                _append(curve, epoch + 1, self.total, quiet_evaluate(peer, X_val, y_val))

        self.trainer.callbacks.callbacks.append(Clock())
        self._set_threads()
        try:
            X, y = self._on_device(X), self._on_device(y)
            self.trainer.fit(X, y, epochs=epochs, batch_size=batch_size, shuffle=True, seed=1)
        finally:
            self.trainer.callbacks.callbacks.pop()
        return curve

    def info(self):
        import numba  # noqa: PLC0415

        import gpunet  # noqa: PLC0415

        trainer = getattr(self, "trainer", None)
        return {
            "engine": trainer and trainer.engine_name,
            "device": self.device,
            "flush_denormals": self.flush_denormals,
            "numba_threads": numba.get_num_threads(),
            "gpunet_threads": self.threads or gpunet.get_num_threads(),
        }


class DeviceCache:
    """Host data sets on a device, copied once: calling it with ``A`` returns ``A``
    itself on the CPU, else a device copy; a copy is reused (a view of its leading rows)
    while ``A`` starts at the same address and is no longer than the array copied, so
    the benchmark's leading slices ``X[:n]`` of one data set are copied once. The cache
    holds the host arrays it copied (no other array can take their address) and the
    ``KEEP`` most recent copies."""

    KEEP = 4

    def __init__(self, device: str, to_device):
        self.device, self.to_device = device, to_device
        self.copies: dict = {}  # (address, dtype, shape[1:]) -> (host array, copy)

    def __call__(self, A):
        if self.device == "cpu":
            return A
        A = np.asarray(A)
        key = (A.ctypes.data, A.dtype.str, A.shape[1:])
        host, copy = self.copies.pop(key, (None, None))
        if host is None or len(host) < len(A) or not A.flags.c_contiguous:
            host, copy = A, self.to_device(np.ascontiguousarray(A))
        self.copies[key] = (host, copy)  # the most recent last
        while len(self.copies) > self.KEEP:
            self.copies.pop(next(iter(self.copies)))
        return copy[: len(A)]


def _to_cupy(A):
    import cupy  # noqa: PLC0415

    return cupy.asarray(A)


def _clock(device: str) -> float:
    """Host seconds now, after the device finished its queued work."""
    import time  # noqa: PLC0415

    if device.startswith("cuda"):
        import cupy  # noqa: PLC0415

        cupy.cuda.Device().synchronize()
    return time.perf_counter()


class TorchPeer(Peer):
    """PyTorch: the standard ``zero_grad / cross_entropy / backward / step`` loop, on
    ``device`` ("cpu" with ``threads`` intra-op threads, default gpunet's
    ``get_num_threads()``, or "cuda[:N]")."""

    key, label = "torch", "PyTorch"

    def __init__(self, widths, seed: int = 0, threads: int | None = None, device: str = "cpu"):
        super().__init__(widths, seed)
        import torch  # noqa: PLC0415

        import gpunet  # noqa: PLC0415

        self.device = device
        self.threads = threads or gpunet.get_num_threads()
        if device == "cpu":
            torch.set_num_threads(self.threads)
        self._on_device = DeviceCache(device, lambda A: torch.from_numpy(A).to(device))

    @staticmethod
    def unavailable():
        try:
            import torch  # noqa: F401, PLC0415
        except ImportError:
            return "torch is not installed"
        return None

    def build(self, optimizer_name, dtype):
        import torch  # noqa: PLC0415

        self.torch = torch
        self.dtype = dtype
        modules = []
        params = init_params(self.widths, self.seed, dtype)
        for k, (W, b) in enumerate(params):
            linear = torch.nn.Linear(W.shape[1], W.shape[0], dtype=torch.from_numpy(W).dtype)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(W))
                linear.bias.copy_(torch.from_numpy(b))
            modules.append(linear)
            if k < len(params) - 1:
                modules.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*modules).to(self.device)
        if optimizer_name == "sgd":
            self.opt = torch.optim.SGD(self.model.parameters(), **self.hyper)
        else:
            self.opt = torch.optim.Adam(self.model.parameters(), **self.hyper)

    def _tensor(self, A):
        """``A`` as a tensor on the peer's device (no copy on the CPU; on a GPU the data
        set is copied once, ``DeviceCache``)."""
        return self.torch.from_numpy(A) if self.device == "cpu" else self._on_device(A)

    def train(self, X, y, batch_size):
        F = self.torch.nn.functional
        X, y = self._tensor(X), self._tensor(y)
        order = self.torch.from_numpy(self._order(len(y))).to(self.device)
        Xs, ys = X[order], y[order]
        for start in range(0, len(ys), batch_size):
            xb, yb = Xs[start : start + batch_size], ys[start : start + batch_size]
            self.opt.zero_grad()
            loss = F.cross_entropy(self.model(xb), yb)
            loss.backward()
            self.opt.step()
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def evaluate(self, X, y):
        torch = self.torch
        with torch.no_grad():
            logits = self.model(self._tensor(np.ascontiguousarray(X)))
            logp = torch.log_softmax(logits, dim=1).cpu().numpy()
        return _cross_entropy(logp, np.asarray(y))

    def info(self):
        import torch  # noqa: PLC0415

        return {"torch_threads": torch.get_num_threads(), "device": self.device}


class NumpyPeer(Peer):
    """The plain NumPy MLP of this module (``NumpyMLP``); ``threads``: BLAS threads
    (None: BLAS's default)."""

    key, label = "numpy", "NumPy"

    def __init__(self, widths, seed: int = 0, threads: int | None = None):
        super().__init__(widths, seed)
        self.threads = threads

    def build(self, optimizer_name, dtype):
        self.net = NumpyMLP(
            init_params(self.widths, self.seed, dtype), optimizer_name, **self.hyper
        )

    def train(self, X, y, batch_size):
        self._limit_threads()
        order = self._order(len(y))
        Xs, ys = X[order], y[order]
        for start in range(0, len(ys), batch_size):
            self.net.train_step(Xs[start : start + batch_size], ys[start : start + batch_size])

    def evaluate(self, X, y):
        return _cross_entropy(self.net.log_softmax(self.net.forward(X)[-1]), y)


class SklearnPeer(Peer):
    """scikit-learn ``MLPClassifier.partial_fit`` (one pass over the data per call, its
    own shuffling and Glorot init, no L2 penalty). Mini-batch sizes only: 1 < batch < N.
    ``threads``: BLAS and OpenMP threads (None: their defaults)."""

    key, label = "sklearn", "scikit-learn"

    def __init__(self, widths, seed: int = 0, threads: int | None = None):
        super().__init__(widths, seed)
        self.threads = threads

    @staticmethod
    def unavailable():
        try:
            import sklearn  # noqa: F401, PLC0415
        except ImportError:
            return "scikit-learn is not installed"
        return None

    def supports(self, batch_size, n_samples):
        return 1 < batch_size < n_samples

    def build(self, optimizer_name, dtype):
        from sklearn.neural_network import MLPClassifier  # noqa: PLC0415

        hyper = self.hyper
        extra = (
            {"momentum": hyper["momentum"], "nesterovs_momentum": False}
            if optimizer_name == "sgd"
            else {"beta_1": hyper["betas"][0], "beta_2": hyper["betas"][1], "epsilon": hyper["eps"]}
        )
        self.model = MLPClassifier(
            hidden_layer_sizes=tuple(self.widths[1:-1]),
            activation="relu",
            solver=optimizer_name,
            alpha=0.0,
            learning_rate_init=hyper["lr"],
            shuffle=True,
            random_state=self.seed,
            **extra,
        )

    def train(self, X, y, batch_size):
        self._limit_threads()
        self.model.set_params(batch_size=batch_size)
        self.model.partial_fit(X, y, classes=np.arange(self.widths[-1]))

    def evaluate(self, X, y):
        proba = self.model.predict_proba(X)
        return _cross_entropy(np.log(np.maximum(proba, 1e-30)), y)


PEERS = {cls.key: cls for cls in (GpunetPeer, TorchPeer, NumpyPeer, SklearnPeer)}
