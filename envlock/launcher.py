"""Which launcher started this process (torchrun, Slurm's srun), read from the environment it sets.

Launchers change what a job sees: torchrun sets OMP_NUM_THREADS=1 for its workers when it is unset, and a Slurm
task runs on the CPUs `--cpus-per-task` gives it. Capture and verify name the launcher so their advice fits it.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # see envlock/errors.py: a job start reads the launcher without typing or dataclasses
if TYPE_CHECKING:
    from collections.abc import Mapping

#: torchrun's default for OMP_NUM_THREADS when the variable is unset (torch.distributed.run).
TORCHRUN_OMP_DEFAULT = "1"


class Launcher:
    """The launcher of this process: its name ("torchrun", "slurm"), this process's global rank and the world
    size (0 when the launcher does not say)."""

    __slots__ = ("name", "rank", "world_size")

    def __init__(self, name: str, rank: int = 0, world_size: int = 0) -> None:
        self.name = name
        self.rank = rank
        self.world_size = world_size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Launcher):
            return NotImplemented
        return (self.name, self.rank, self.world_size) == (other.name, other.rank, other.world_size)

    def __hash__(self) -> int:
        return hash((self.name, self.rank, self.world_size))

    def __repr__(self) -> str:
        return f"Launcher(name={self.name!r}, rank={self.rank!r}, world_size={self.world_size!r})"

    @property
    def label(self) -> str:
        return {"torchrun": "torchrun", "slurm": "a Slurm job step (srun)"}.get(self.name, self.name)

    @property
    def workers(self) -> str:
        """Who runs the job under this launcher, for "as … see it"."""
        return {"torchrun": "torchrun's workers", "slurm": "the Slurm tasks"}.get(self.name, self.name)


def _int(value: str | None) -> int:
    try:
        return int(value or "0")
    except ValueError:
        return 0


def detect(environ: Mapping[str, str] | None = None) -> Launcher | None:
    """The launcher that started this process, or None for a plain process. torchrun wins over Slurm (srun
    torchrun … is a torchrun worker inside a Slurm task)."""
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" in env or "TORCHELASTIC_RESTART_COUNT" in env:
        return Launcher("torchrun", _int(env.get("RANK")), _int(env.get("WORLD_SIZE")))
    if "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        return Launcher("slurm", _int(env.get("SLURM_PROCID")), _int(env.get("SLURM_NTASKS")))
    return None


def torchrun_omp_hint() -> str:
    """The advice for OMP_NUM_THREADS=1 under torchrun when the lock has it unset."""
    return (f"torchrun sets OMP_NUM_THREADS={TORCHRUN_OMP_DEFAULT} for its workers when it is unset (its default) "
            "of a job with more than one process per node, and the lock was captured outside it. Either capture as "
            "the workers run, with the job's process count: `torchrun --standalone --nproc-per-node N -m envlock "
            "capture`, or set the thread count yourself in both places: `export OMP_NUM_THREADS=N` before "
            "`envlock capture` and before torchrun")
