"""Data: folders to labelled samples, image decoding, transforms, datasets."""

from dogclf.data.dataset import ImageDataset
from dogclf.data.folder import (
    ClassInfo,
    DataSplits,
    Sample,
    find_classes,
    load_splits,
    read_names_file,
    stratified_split,
)
from dogclf.data.images import IMAGE_EXTENSIONS, find_unreadable, load_rgb
from dogclf.data.synthetic import make_synthetic_dataset
from dogclf.data.transforms import eval_transform, train_transform

__all__ = [
    "IMAGE_EXTENSIONS",
    "ClassInfo",
    "DataSplits",
    "ImageDataset",
    "Sample",
    "eval_transform",
    "find_classes",
    "find_unreadable",
    "load_rgb",
    "load_splits",
    "make_synthetic_dataset",
    "read_names_file",
    "stratified_split",
    "train_transform",
]
