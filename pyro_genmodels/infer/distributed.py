"""Evaluation sharded over processes with Lightning's ``Trainer.predict``."""

from __future__ import annotations

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


def release_process_group() -> None:
    """End this process's part in a distributed run: wait for the other processes, then
    destroy the default process group.

    Lightning leaves the group alive after ``fit`` and ``predict`` (to reuse it); a process
    that then exits with gloo's threads still running can abort in C++ teardown
    ("terminate called without an active exception", exit status -6) after its work is done.
    A no-op outside a distributed run.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
