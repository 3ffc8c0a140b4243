"""First-order optimizers (SGD with momentum/Nesterov, RMSProp, Adam/AdamW) and learning-rate schedules.

Optimizers follow torch's formulas, so results can be compared step for step:

- weight decay (L2) is added to the gradient, ``g = g + weight_decay * p`` (torch's non-decoupled
  form); ``Adam(decoupled_weight_decay=True)`` instead shrinks ``p *= 1 - lr * weight_decay`` (AdamW);
- SGD momentum: ``buf = momentum * buf + g`` (``buf = g`` on the first step); the step is ``buf``, or
  ``g + momentum * buf`` with Nesterov;
- RMSProp: ``v = alpha * v + (1 - alpha) * g**2``, ``p -= lr * g / (sqrt(v) + eps)``;
- Adam: bias-corrected moments, ``p -= lr * m_hat / (sqrt(v_hat) + eps)``.

``opt.step(model)`` updates every parameter of ``model.named_parameters()`` in place (parameters with
no gradient yet are skipped). Per-parameter state is keyed by qualified name ("dense_1.W"), so
``state_dict()`` (numpy arrays) can be saved with ``write_state`` and restored on any device: arrays are
moved to the parameter's device at the next step.
"""

from __future__ import annotations

import math

import numpy as np

from actionrec.backend import get_array_module, to_device, to_numpy
from actionrec.errors import ActionrecError


class Optimizer:
    """Shared bookkeeping: learning rate, weight decay, per-parameter state and its (de)serialisation."""

    name = "optimizer"

    def __init__(self, lr: float, weight_decay: float = 0.0):
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.state: dict[str, dict] = {}

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def step(self, model):
        """Update every parameter of ``model`` in place from its current gradient."""
        for qualified_name, param, grad in model.named_parameters():
            if grad is None:
                continue
            if grad.shape != param.shape:
                raise ValueError(f"gradient of {qualified_name} has shape {grad.shape}, parameter {param.shape}")
            xp = get_array_module(param)
            state = self.state.setdefault(qualified_name, {})
            for key, value in state.items():  # state restored from a file lives on numpy
                if hasattr(value, "shape") and get_array_module(value) is not xp:
                    state[key] = to_device(value, xp)
            self._update(xp, param, grad, state)

    def _decayed(self, param, grad):
        return grad + self.weight_decay * param if self.weight_decay else grad

    def _update(self, xp, param, grad, state):
        raise NotImplementedError

    def state_dict(self) -> dict:
        """{"type", hyperparameters..., "state": {qualified_name: {key: numpy array or number}}}."""
        state = {name: {k: (to_numpy(v) if hasattr(v, "shape") else v) for k, v in s.items()}
                 for name, s in self.state.items()}
        return {"type": self.name, **self.hyperparameters(), "state": state}

    def load_state_dict(self, d: dict):
        """Restore what ``state_dict`` returned (hyperparameters included; lr may be reset by a schedule)."""
        if d.get("type") != self.name:
            raise ActionrecError(f"optimizer state is for {d.get('type')!r}, not {self.name!r}: "
                                 "resume with the same --optimizer")
        for key, current in self.hyperparameters().items():
            if key in d:  # a file stores tuples as lists
                setattr(self, key, tuple(d[key]) if isinstance(current, tuple) else d[key])
        self.state = {name: {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                      for name, s in d.get("state", {}).items()}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum."""

    name = "sgd"

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def hyperparameters(self) -> dict:
        return {**super().hyperparameters(), "momentum": self.momentum, "nesterov": self.nesterov}

    def _update(self, xp, param, grad, state):
        g = self._decayed(param, grad)
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        param -= self.lr * g


class RMSProp(Optimizer):
    """Divide the gradient by a running root mean square of recent gradients (Tieleman & Hinton 2012)."""

    name = "rmsprop"

    def __init__(self, lr: float = 1e-3, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        self.alpha = float(alpha)
        self.eps = float(eps)

    def hyperparameters(self) -> dict:
        return {**super().hyperparameters(), "alpha": self.alpha, "eps": self.eps}

    def _update(self, xp, param, grad, state):
        g = self._decayed(param, grad)
        v = state.get("square_avg")
        if v is None:
            v = state["square_avg"] = xp.zeros_like(param)
        v *= self.alpha
        v += (1 - self.alpha) * g * g
        param -= self.lr * g / (xp.sqrt(v) + self.eps)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction; ``decoupled_weight_decay=True`` gives AdamW."""

    name = "adam"

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 decoupled_weight_decay: bool = False):
        super().__init__(lr, weight_decay)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Adam betas must be two numbers in [0, 1), got {betas}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)

    def hyperparameters(self) -> dict:
        return {**super().hyperparameters(), "betas": self.betas, "eps": self.eps,
                "decoupled_weight_decay": self.decoupled_weight_decay}

    def _update(self, xp, param, grad, state):
        if self.decoupled_weight_decay:
            if self.weight_decay:
                param *= 1 - self.lr * self.weight_decay
            g = grad
        else:
            g = self._decayed(param, grad)
        b1, b2 = self.betas
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(param)
            state["exp_avg_sq"] = xp.zeros_like(param)
        state["step"] = t = int(state["step"]) + 1
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        denom = xp.sqrt(v) / math.sqrt(1 - b2**t) + self.eps
        param -= (self.lr / (1 - b1**t)) * m / denom


OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSProp, "adam": Adam, "adamw": Adam}


def make_optimizer(name: str, lr: float | None = None, **kwargs) -> Optimizer:
    """Optimizer by name ("sgd", "rmsprop", "adam", "adamw" = Adam with decoupled weight decay)."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ActionrecError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    if key == "adamw":
        kwargs.setdefault("decoupled_weight_decay", True)
    if lr is not None:
        kwargs["lr"] = lr
    try:
        return OPTIMIZERS[key](**kwargs)
    except TypeError as exc:
        raise ActionrecError(f"optimizer {name!r}: {exc}") from None


# --- learning-rate schedules (epoch -> lr, epochs counted from 0) ---------------------------------
class ConstantLR:
    """The same learning rate every epoch."""

    def __init__(self, lr: float):
        self.lr = float(lr)

    def __call__(self, epoch: int) -> float:
        return self.lr


class StepLR:
    """``lr * gamma ** (epoch // step_size)``: divide by 1/gamma every ``step_size`` epochs."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        self.lr, self.step_size, self.gamma = float(lr), int(step_size), float(gamma)

    def __call__(self, epoch: int) -> float:
        return self.lr * self.gamma ** (epoch // self.step_size)


class CosineLR:
    """Linear warm-up then cosine decay from ``lr`` to ``min_lr``.

    Epoch e < warmup_epochs: ``lr * (e + 1) / warmup_epochs`` (reaches lr at the last warm-up epoch).
    Afterwards, with p = (e - warmup) / (total_epochs - warmup) in [0, 1]:
    ``min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2``, i.e. lr at the first epoch after warm-up and
    min_lr from epoch ``total_epochs`` on.
    """

    def __init__(self, lr: float, total_epochs: int, min_lr: float = 0.0, warmup_epochs: int = 0):
        if total_epochs < 1 or not 0 <= warmup_epochs < max(total_epochs, 1):
            raise ValueError(f"CosineLR needs total_epochs >= 1 and 0 <= warmup_epochs < total_epochs, "
                             f"got {total_epochs} and {warmup_epochs}")
        self.lr, self.total_epochs = float(lr), int(total_epochs)
        self.min_lr, self.warmup_epochs = float(min_lr), int(warmup_epochs)

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:  # min(): a fractional epoch (per-step schedules) never overshoots lr
            return self.lr * min(1.0, (epoch + 1) / self.warmup_epochs)
        progress = min(1.0, (epoch - self.warmup_epochs) / (self.total_epochs - self.warmup_epochs))
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES = ("constant", "step", "cosine")


def make_schedule(name: str, lr: float, epochs: int, **kwargs):
    """Schedule by name: "constant"; "step" (step_size defaults to epochs // 3, gamma=0.1);
    "cosine" (min_lr=0, warmup_epochs=0)."""
    key = str(name).lower()
    try:
        if key == "constant":
            return ConstantLR(lr)
        if key == "step":
            kwargs.setdefault("step_size", max(1, epochs // 3))
            return StepLR(lr, **kwargs)
        if key == "cosine":
            return CosineLR(lr, epochs, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ActionrecError(f"schedule {name!r}: {exc}") from None
    raise ActionrecError(f"unknown learning-rate schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
