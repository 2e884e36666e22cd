"""Training data: reading records, tokenising them with loss masks, and forming batches (`batching`, which
needs torch, is left out here: preparing data, also in worker processes, imports this package)."""

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
    "load_samples",
]
