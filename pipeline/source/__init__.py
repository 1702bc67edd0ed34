"""Source: find the samples of an ImageNet tree in any layout (class folders, flat val + a label file, the
original archives read in place) and name the files that cannot be used. Its one job ends at a typed list of
samples per split (:class:`SourceTree`); cleaning and writing them is :mod:`pipeline.shard`'s.

Modules, one job each: :mod:`types` (what a scan takes and returns), :mod:`names` (ImageNet's file names),
:mod:`archives` (the ILSVRC2012 tars read in place), :mod:`labels` (parse label, class-list and id-map
files), :mod:`val_labels` (choose the label file of a flat val), :mod:`scan` (detect the layout and scan it).
"""

from pipeline.source.labels import read_class_list
from pipeline.source.scan import scan_class_folders, scan_source
from pipeline.source.types import LayoutError, LayoutKind, LayoutOptions, SourceItem, SourceTree, Unusable

__all__ = ["LayoutError", "LayoutKind", "LayoutOptions", "SourceItem", "SourceTree", "Unusable", "read_class_list",
           "scan_class_folders", "scan_source"]
