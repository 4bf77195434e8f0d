"""Data-parallel training: exact averaging, split work, FSDP2 (see :mod:`.data_parallel`)."""
