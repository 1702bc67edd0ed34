"""Names: the file and folder names that ImageNet's downloads use, and how this package names a file (its stem
for matching label lines, its path relative to SRC for messages). One job: say what is called what."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

SPLITS = ("train", "val")

TRAIN_ARCHIVE = "ILSVRC2012_img_train.tar"
VAL_ARCHIVE = "ILSVRC2012_img_val.tar"
KAGGLE_DATA = ("ILSVRC", "Data", "CLS-LOC")
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_MAPPING = "LOC_synset_mapping.txt"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_ARCHIVES = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_devkit_t12.tgz", "ILSVRC2012_devkit_t12.tar")
TF_LABELS = "imagenet_2012_validation_synset_labels.txt"
VALPREP = "valprep.sh"
CAFFE_LABELS = "val.txt"
ID_MAP_TEXTS = ("map_clsloc.txt", "imagenet_folder_id_class.txt")
META_MAT = "meta.mat"
SYNSET_LISTS = ("synset_words.txt", KAGGLE_MAPPING, "synsets.txt", "imagenet_lsvrc_2015_synsets.txt")
# File names that are label/metadata sources, never inputs, wherever they sit (e.g. valprep.sh inside val/).
META_NAMES = frozenset((KAGGLE_SOLUTION, KAGGLE_MAPPING, DEVKIT_GROUND_TRUTH, TF_LABELS, VALPREP, CAFFE_LABELS,
                        META_MAT, "LOC_train_solution.csv", "LOC_sample_submission.csv", *ID_MAP_TEXTS,
                        *SYNSET_LISTS, *DEVKIT_ARCHIVES))


def file_stem(name: str) -> str:
    """``dir/ILSVRC2012_val_00000001.JPEG`` → ``ILSVRC2012_val_00000001``."""
    base = posixpath.basename(name.replace(os.sep, "/"))
    return base.rsplit(".", 1)[0] if "." in base else base


def display_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else absolute."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
