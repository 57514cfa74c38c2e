"""Referring-video data: the synthetic world and readers of real datasets, all yielding `Sample`s.

    data = open_dataset("synthetic:20240917:200")   # or a Ref-YouTube-VOS / Ref-DAVIS17 / plain folder
    sample = data[0]                                # Sample(frames, masks, expression, kind, ...)
"""
from rvos_edge.data.readers import (
                                    HELDOUT_SEED,
                                    Dataset,
                                    FolderDataset,
                                    RefVOSDataset,
                                    open_dataset,
                                    write_folder_dataset,
)
from rvos_edge.data.sample import KINDS, Sample
from rvos_edge.data.synthetic import SyntheticDataset, generate

__all__ = ["HELDOUT_SEED", "KINDS", "Dataset", "FolderDataset", "RefVOSDataset", "Sample", "SyntheticDataset",
           "generate", "open_dataset", "write_folder_dataset"]
