"""This process's place in an mlx.launch group (kept apart from distributed.py, which imports
mlx-lm: the server asks this at start-up and a lone server should not pay for that import)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import mlx.core as mx

log = logging.getLogger("mlxollama.distributed")


class GroupDown(RuntimeError):
    """The group can no longer step together: a rank died, hung, or a step failed."""


@dataclass
class Group:
    """This process's place in the distributed group (one per process)."""

    group: object = None  # mx.distributed.Group
    rank: int = 0
    size: int = 1
    down: str | None = None  # why the group is down, once it is
    owner: str | None = None  # short name of the model sharded over the group now
    lock: threading.Lock = None

    def __post_init__(self):
        self.lock = threading.Lock()


_group = Group()


def init_group() -> Group:
    """Join the group mlx.launch (or MLX_RANK/MLX_HOSTFILE) describes; a lone process is a group of one."""
    global _group
    group = mx.distributed.init()
    _group = Group(group=group, rank=group.rank(), size=group.size())
    if _group.size > 1:
        log.info("distributed group: rank %d of %d (backend ready)", _group.rank, _group.size)
    return _group


def current_group() -> Group:
    return _group


def group_down_text(reason: str) -> str:
    return f"distributed group is down: {reason}; restart the launch to bring it back"
