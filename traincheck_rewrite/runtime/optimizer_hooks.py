"""Optimizer steps seen through torch's own global step hooks, whoever makes them.

`torch.optim.optimizer.register_optimizer_step_pre_hook`/`_post_hook` run around every `Optimizer.step` of every
optimizer (built-in or a subclass): called from the program, from a framework (the HF `Trainer`, Lightning, an
`accelerate` wrapper), from a `GradScaler` (only when it really steps: a skipped step runs no hook), with or without
a closure. So the step counter learns of each step here rather than from call-site names, and the tracked
parameters an optimizer step changed are recorded inside the step's own call window, before its post record.

A step made by compiled code (`torch.compile(optimizer.step)`, a compiled training step) runs the hooks only while
dynamo traces them: the pre-hook then leaves a mark (`Steps.compiled_step`) that dynamo replays each time the
compiled code runs, and the step counter takes it as one optimizer step at the next loop iteration or loop end.

The hooks are registered once `torch.optim.optimizer` has been imported (`after_import` watches for it), so
starting the recorder imports nothing.
"""

from __future__ import annotations

import sys

from . import logged_importlib_bootstrap as calls
from . import recorder
from .values import type_name

OPTIMIZER_MODULE = "torch.optim.optimizer"
_step_names: dict[type, str] = {}
_registered = False


def install() -> None:
    """Register the hooks now if torch.optim is imported, else as soon as it is."""
    if OPTIMIZER_MODULE in sys.modules:
        _register(sys.modules[OPTIMIZER_MODULE])
    else:
        from .after_import import after_import

        after_import(OPTIMIZER_MODULE, _register)


def _register(module) -> None:
    global _registered
    if _registered:  # a forked child inherits the parent's hooks
        return
    _registered = True
    module.register_optimizer_step_pre_hook(_before_step)
    module.register_optimizer_step_post_hook(_after_step)


def step_name(optimizer) -> str:
    """`torch.optim.adam.Adam.step`: the class that defines `step`, as TrainCheck names it."""
    cls = type(optimizer)
    name = _step_names.get(cls)
    if name is None:
        definer = next((base for base in cls.__mro__ if "step" in base.__dict__), cls)
        name = _step_names[cls] = f"{type_name(definer)}.step"
    return name


def _before_step(optimizer, args, kwargs) -> None:
    state = recorder._state
    if state is None:
        return
    if calls.compiling():
        # Dynamo traces this hook into the compiled code, where it cannot call the recorder; but it replays a store
        # to an attribute after the graph runs, with no guard and no graph break: the next loop event takes the step.
        state.steps.compiled_step = True
        return
    try:
        state.checked_in_step.clear()
        state.steps.optimizer_step()
    except Exception as exc:
        calls.recorder_error(exc)


def _after_step(optimizer, args, kwargs) -> None:
    if recorder._state is None:
        return
    try:  # a hook's exception would end the program's optimizer.step()
        name = step_name(optimizer)
    except Exception as exc:
        calls.recorder_error(exc)
        return
    recorder.after_optimizer_step(name, optimizer)
