"""Training data: reading records, tokenising them with loss masks, and forming batches."""

from kubedistill.runtime.data.batching import balance, global_batches, shard_micro_batches, steps_per_epoch
from kubedistill.runtime.data.errors import BadRecord, BadRecordError, ChatTemplateError, DataFileError
from kubedistill.runtime.data.load import LoadedData, load_samples
from kubedistill.runtime.data.sample import Sample

__all__ = [
    "BadRecord",
    "BadRecordError",
    "ChatTemplateError",
    "DataFileError",
    "LoadedData",
    "Sample",
    "balance",
    "global_batches",
    "load_samples",
    "shard_micro_batches",
    "steps_per_epoch",
]
