"""Data: folders to labelled samples, image decoding, transforms, datasets, degraded views and synthetic sets."""

from dogclf.data.dataset import ImageDataset
from dogclf.data.folder import (
    ClassInfo,
    DataSplits,
    Sample,
    find_classes,
    find_images,
    load_splits,
    read_names_file,
    stratified_split,
)
from dogclf.data.images import IMAGE_EXTENSIONS, find_unreadable, load_rgb
from dogclf.data.labelled import LabelledFolder, load_labelled, match_folders
from dogclf.data.synthetic import make_synthetic_dataset
from dogclf.data.transforms import eval_transform, train_transform

__all__ = [
    "IMAGE_EXTENSIONS",
    "ClassInfo",
    "DataSplits",
    "ImageDataset",
    "LabelledFolder",
    "Sample",
    "eval_transform",
    "find_classes",
    "find_images",
    "find_unreadable",
    "load_labelled",
    "load_rgb",
    "load_splits",
    "match_folders",
    "make_synthetic_dataset",
    "read_names_file",
    "stratified_split",
    "train_transform",
]
