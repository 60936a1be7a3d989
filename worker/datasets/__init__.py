"""Dataset import: DIGITS resize geometry and the folder/textfile import pipeline."""

from worker.datasets.importer import (
    DatasetImportError,
    ImportAborted,
    ImportOptions,
    ImportResult,
    Source,
    import_dataset,
)
from worker.datasets.resize import RESIZE_MODES, resize_image

__all__ = [
    "RESIZE_MODES",
    "DatasetImportError",
    "ImportAborted",
    "ImportOptions",
    "ImportResult",
    "Source",
    "import_dataset",
    "resize_image",
]
