"""Dataset loaders that all return the same in-memory train/validation/test splits."""

from search_spaces.datasets.loading import DatasetSpecLike, available_datasets, load_dataset, missing_files
from search_spaces.datasets.splits import DatasetError, DataSplits, Split

__all__ = ["DataSplits", "DatasetError", "DatasetSpecLike", "Split", "available_datasets", "load_dataset",
           "missing_files"]
