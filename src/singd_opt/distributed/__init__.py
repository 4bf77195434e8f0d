"""Data-parallel training: exact averaging, split work, FSDP2 (see :mod:`.data_parallel`)."""

from singd_opt.distributed.collectives import Collectives, CommunicationStats
from singd_opt.distributed.data_parallel import DISTRIBUTE_MODES, DataParallelSync

__all__ = ["DISTRIBUTE_MODES", "Collectives", "CommunicationStats", "DataParallelSync"]
