"""The `step` and `stage` meta variables, from what the program does.

The rewriter marks every loop iteration (`_tc_.loop`, `_tc_.cond`). The training loop is the innermost loop with an
iteration running when the first optimizer step starts (or, in a program that makes no optimizer, the innermost loop whose
iteration ran `backward`). `step` is 0 before it, 1 from its first iteration, and goes up by one at each start of
one of its iterations that follows an optimizer step, across re-entries (epochs): so micro-batch iterations of
gradient accumulation, several optimizers and LBFGS closures all count once per optimizer step, and what an
iteration does after `optimizer.step()` keeps that iteration's step. Until the training loop is known, the records
a thread makes inside loops are held (at most 30 s or 20,000 records): written as usual, and kept; when it becomes
known, those since the start of its first iteration get step 1 and stage `training` and are written again in place
(writer.py, `hold`/`release`).

Optimizer steps are reported by torch's own step hooks (optimizer_hooks.py), whoever makes them. A framework's
training loop is found the same way when its loop module is rewritten with markers (runtime/libraries.py). When an
optimizer step runs with no marked loop iterating (a loop inside code that is not rewritten), the optimizer steps
themselves are the training loop (`UNMARKED`): `step` becomes 1 at the first and goes up as each step returns.
An optimizer step made by compiled code is learnt of at the next loop iteration or loop end (optimizer_hooks.py), as
if it had been made just before: so each iteration of a marked loop that runs one counts once, as in eager mode.

`stage` is `checkpointing` inside `torch.save`/`torch.load`; else, once training has started, `training` with grad
enabled and tracked models in train mode and `evaluation` otherwise; before that, `evaluation` for loops run without
grad or with a tracked model in eval mode, and `init` for everything else (a `@torch.no_grad()` setup function
included). A stage the program sets itself (`meta_vars["stage"]`, TrainCheck's `annotate_stage`) replaces all of
this from then on.
"""

from __future__ import annotations

import sys
import threading

from . import meta

HOLD_LIMIT = 20_000  # records held before giving up on relabelling them (an inference loop never finds training)
HOLD_NS = 30_000_000_000  # a first iteration can be slow (lazy initialisation, a busy machine); held records are on disk already
UNMARKED = "optimizer steps"  # the training loop when no marked loop is iterating as the optimizer steps


class _Iteration:
    __slots__ = ("loop", "start", "loop_start", "backward")

    def __init__(self, loop: int, start: int, loop_start: int) -> None:
        self.loop, self.start, self.loop_start, self.backward = loop, start, loop_start, False


class Steps:
    def __init__(self) -> None:
        self.training_loop: int | None = None
        self.outer_loops: set[int] = set()  # loops around the training loop (epochs): their iterations are not evaluation
        self.step = 0
        self.eval_step = 0
        self.user_step = False
        self.optimizer_seen = False
        self.optimizer_made = False  # while an optimizer exists, its step (not backward) defines the training loop
        self.stepped = False  # an optimizer step (or, without optimizer, a backward) since step last went up
        self.compiled_step = False  # an optimizer step made by compiled code since the last loop event (optimizer_hooks.py)
        self.checkpointing = 0
        self.local = threading.local()
        self.holder: int | None = None  # the thread whose records are held until the training loop is known
        self.hold_since = 0
        self.on_hold = None  # called on the holding thread when holding begins
        self.on_release = None  # called with (holder, since) when it ends: see `release`
        self.on_step = None  # called on the training thread just after `step` went up
        self.on_compiled_step = None  # called as an optimizer step made by compiled code is counted, in its step
        self.roots: dict = {}  # id -> tracked root module, for train/eval mode
        self.before_next_step = None  # called with the next step's number just before `step` goes up
        self.sent = False  # a DataLoader worker given its step and stage with each batch (loader_meta.py): kept as sent
        self._grad_enabled = None

    def _stack(self) -> list[_Iteration]:
        try:
            return self.local.stack
        except AttributeError:
            self.local.stack = []
            return self.local.stack

    # --- events -----------------------------------------------------------------------------------------------

    def iteration(self, loop: int, now: int) -> None:
        if self.compiled_step:
            self._take_compiled_step()
        stack = self._stack()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i].loop == loop:
                for inner in stack[i + 1 :]:
                    self._ended(inner)
                del stack[i + 1 :]
                self._ended(stack[i])
                stack[i] = _Iteration(loop, now, stack[i].loop_start)
                break
        else:
            stack.append(_Iteration(loop, now, now))
        if loop == self.training_loop:
            if self.stepped and not self.user_step:
                self._next_step()
        elif self.training_loop is not None and loop not in self.outer_loops and self.stage() == "evaluation":
            self.eval_step += 1
            meta.update(eval_step=self.eval_step)
        if self.training_loop is None and not self.user_step and self.holder is None:
            self.holder, self.hold_since = threading.get_ident(), now
            if self.on_hold is not None:
                self.on_hold()

    def loop_end(self, loop: int) -> None:
        if self.compiled_step:
            self._take_compiled_step()
        stack = self._stack()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i].loop == loop:
                for it in stack[i:]:
                    self._ended(it)
                del stack[i:]
                break
        if not stack and self.holder == threading.get_ident():
            self.release(None)  # the outermost loop ended without training: nothing to relabel

    def _ended(self, it: _Iteration) -> None:
        """End of an iteration: with no optimizer at all, a loop whose iteration ran backward is the training loop."""
        if self.training_loop is None and not self.optimizer_made and it.backward and not self.user_step:
            self._found(it)

    def optimizer_step(self) -> None:
        self.optimizer_seen = self.optimizer_made = True
        self.stepped = True
        if self.training_loop is None and not self.user_step:
            stack = self._stack()
            if stack:
                self._found(stack[-1])
            else:
                self._found_unmarked()

    def _take_compiled_step(self) -> None:
        """Compiled code made an optimizer step (one or more) since the last loop event, in the iteration that is
        ending: counted as eager steps are, once per training-loop iteration."""
        self.compiled_step = False
        self.optimizer_step()
        if self.on_compiled_step is not None:
            self.on_compiled_step()
        self.optimizer_step_done()

    def optimizer_step_done(self) -> None:
        """With no marked training loop, the records after an optimizer step belong to the next step."""
        if self.training_loop == UNMARKED and not self.user_step:
            self._next_step()

    def _next_step(self) -> None:
        if self.before_next_step is not None:
            self.before_next_step(self.step + 1)
        self.step += 1
        self.stepped = False
        meta.update(step=self.step)
        if self.on_step is not None:
            self.on_step()

    def _found_unmarked(self) -> None:
        self.training_loop = UNMARKED
        self.step = 1
        meta.update(step=1, stage=self.stage())
        if self.holder is not None:
            self.release(None)

    def backward(self) -> None:
        stack = self._stack()
        if stack:
            stack[-1].backward = True
        if not self.optimizer_seen and self.training_loop is not None:
            self.stepped = True  # no optimizer: an iteration that ran backward is a training iteration

    def _found(self, it: _Iteration) -> None:
        self.training_loop = it.loop
        self.outer_loops = {outer.loop for outer in self._stack() if outer.loop != it.loop}
        self.step = 1
        self.stepped = self.stepped or (not self.optimizer_seen and it.backward)
        meta.update(step=1, stage=self.stage())
        self.release(it.loop_start)

    def set_user_step(self, value) -> None:
        """A step counter the program keeps itself (meta_from: {step: ...}) wins over the automatic one."""
        self.user_step = True
        self.step = value
        if self.holder is not None:
            self.release(None)

    def set_user_stage(self) -> None:
        """A stage the program sets itself (TrainCheck's `annotate_stage`) is the stage until it sets another."""
        meta.program_stage = True

    def in_training_iteration(self) -> bool:
        """Whether this thread is inside an iteration of the marked training loop (in a loop nested in it too)."""
        loop = self.training_loop
        return loop is not None and any(it.loop == loop for it in self._stack())

    # --- held records -----------------------------------------------------------------------------------------

    def hold_expired(self, now: int, held: int) -> bool:
        """Whether holding goes on too long to be worth it (an inference loop never finds training)."""
        return held >= HOLD_LIMIT or now - self.hold_since > HOLD_NS

    def release(self, since: int | None) -> None:
        """End holding; the held records from `since` on were in the first training iteration: step 1, training."""
        holder, self.holder = self.holder, None
        loop = self.training_loop
        meta.training_after_all = {key for key, (_, made_in) in meta.provisional.items() if made_in == loop}
        if holder is not None and self.on_release is not None:
            self.on_release(holder, since)
        meta.provisional, meta.training_after_all = {}, set()

    # --- stage ------------------------------------------------------------------------------------------------

    def stage(self) -> str:
        if meta.program_stage:
            return meta.current.get("stage", "init")
        if self.checkpointing:
            return "checkpointing"
        grad_enabled = self._grad_enabled
        if grad_enabled is None:
            torch = sys.modules.get("torch")
            if torch is None:
                return "init"
            grad_enabled = self._grad_enabled = torch.is_grad_enabled
        grad = training = grad_enabled()
        if training:
            for m in self.roots.values():
                if not m.training:
                    training = False
                    break
        if self.training_loop is not None:
            if training:
                return "training"
            # A model left in eval mode in the training loop's own iteration, grad on, is still being trained (the
            # stage follows the loop, as TrainCheck's does); an eval loop or grad off is evaluation.
            stack = self._stack()
            return "training" if grad and stack and stack[-1].loop == self.training_loop else "evaluation"
        if not training and self._stack():
            return "evaluation"
        return "init"

    def refresh(self) -> None:
        """Bring meta.current's stage up to date (cheap when it has not changed)."""
        if self.sent:
            return
        stage = self.stage()
        if meta.current.get("stage") != stage:
            meta.update(stage=stage)
        if stage == "evaluation" and self.training_loop is None and not meta.program_stage:
            self._mark_provisional()

    def _mark_provisional(self) -> None:
        """Before the training loop is known, `evaluation` with grad on (a tracked model in eval mode) in a loop's
        iteration is `training` if that loop turns out to be the training loop, as in its later iterations: such
        records get a snapshot of their own, remembered with the loop (meta.provisional)."""
        loop = self._stack()[-1].loop if self._grad_enabled() else None
        entry = meta.provisional.get(id(meta.current))
        if (entry[1] if entry is not None and entry[0] is meta.current else None) != loop:
            meta.update(stage="evaluation")
            if loop is not None:
                meta.provisional[id(meta.current)] = (meta.current, loop)
