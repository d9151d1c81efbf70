"""Pieces of multi-process runs: evaluation sharded over processes with Lightning's
``Trainer.predict``, Ctrl-C held back while the processes start, and the end of a process's
part in the run."""

from __future__ import annotations

import signal

import lightning.pytorch as pl
import torch


class BatchEvaluator(pl.LightningModule):
    """Runs ``fn(module, batch)`` on the batches of this process (``Trainer.predict``) and
    gathers every process's results at the end, on every process, in ``results``."""

    def __init__(self, module: torch.nn.Module, fn):
        super().__init__()
        self.net, self.fn, self.results = module, fn, []

    def predict_step(self, batch, batch_idx: int) -> None:
        self.results.append(self.fn(self.net, batch))

    def on_predict_epoch_end(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self.results)
            self.results = [r for part in gathered for r in part]


class HeldInterrupt(pl.Callback):
    """Holds Ctrl-C back while Lightning starts the run's other processes, and lets it go
    when Lightning sets the run up (every process has joined the process group).

    While held, SIGINT is blocked in this thread, so the processes Lightning starts from it
    inherit the block and never see a Ctrl-C (the first process stops them), and a Ctrl-C
    that reaches another thread of this process is noted; on release it is raised here as
    ``KeyboardInterrupt``.
    """

    def __init__(self):
        self.handler, self.pressed = None, False

    def hold(self) -> None:
        self.handler = signal.signal(signal.SIGINT, self._note)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def _note(self, signum, frame) -> None:
        self.pressed = True

    def release(self, raise_pressed: bool = True) -> None:
        """Unblock SIGINT (a pending one is noted now) and restore the handler."""
        if self.handler is None:
            return
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, self.handler)
        self.handler = None
        if self.pressed and raise_pressed:
            raise KeyboardInterrupt

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.release()


def release_process_group(wait: bool = True) -> None:
    """End this process's part in a distributed run: wait for the other processes (unless
    not ``wait``: after an error or Ctrl-C they may be gone), then destroy the default
    process group.

    Lightning leaves the group alive after ``fit`` and ``predict`` (to reuse it); a process
    that then exits with gloo's threads still running can abort in C++ teardown
    ("terminate called without an active exception", exit status -6) after its work is done.
    A no-op outside a distributed run.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
