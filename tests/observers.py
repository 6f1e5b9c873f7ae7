"""Callbacks that watch a real fit from inside its processes (named by class path in subprocess tests)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


class Witness(Callback):
    """Records, per global rank, the training samples each process loads and the checkpoint files it writes.

    ``<folder>/seen-rank<r>.txt``: one ``epoch index`` line per training sample, appended and flushed as it is
    loaded (so a process killed with ``kill -9`` leaves what it had loaded). ``<folder>/writes-rank<r>.txt``: one
    line per checkpoint file this process wrote. Needs ``--data.num_workers 0`` (samples load in the process).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if str(getattr(stage, "value", stage)) != "fit":
            return
        folder, rank = Path(self.folder), trainer.global_rank
        folder.mkdir(parents=True, exist_ok=True)
        seen = folder / f"seen-rank{rank}.txt"
        dataset = trainer.datamodule.datasets["train"]
        original = type(dataset)

        class Recorded(original):  # the sampler's (index, seed) pairs reach __getitem__, looked up on the type
            def __getitem__(self, item):  # noqa: ANN001, ANN204
                index = item[0] if isinstance(item, tuple) else item
                with seen.open("a") as out:
                    out.write(f"{trainer.current_epoch} {index}\n")
                return super().__getitem__(item)

        dataset.__class__ = Recorded
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint
        writes = folder / f"writes-rank{rank}.txt"

        def recorded_save(checkpoint, path, storage_options=None):  # noqa: ANN001, ANN202
            with writes.open("a") as out:
                out.write(f"{path}\n")
            return save(checkpoint, path, storage_options=storage_options)

        io.save_checkpoint = recorded_save


def seen_per_epoch(folder: Path) -> dict[int, dict[int, list[int]]]:
    """``{epoch: {rank: [sample indices in load order]}}`` from a Witness folder."""
    epochs: dict[int, dict[int, list[int]]] = {}
    for path in sorted(folder.glob("seen-rank*.txt")):
        rank = int(path.stem.removeprefix("seen-rank"))
        for line in path.read_text().splitlines():
            epoch, index = map(int, line.split())
            epochs.setdefault(epoch, {}).setdefault(rank, []).append(index)
    return epochs
