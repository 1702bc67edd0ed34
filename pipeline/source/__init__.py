"""Source: find the samples of an ImageNet tree in any layout (class folders, flat val + a label file, the
original archives read in place) and name the files that cannot be used. Its one job ends at a typed list of
samples per split (:class:`SourceTree`); cleaning and writing them is :mod:`pipeline.shard`'s."""

from pipeline.source.layout import (LayoutError, LayoutKind, LayoutOptions, SourceItem, SourceTree, Unusable,
                                    read_class_list, scan_class_folders, scan_source)

__all__ = ["LayoutError", "LayoutKind", "LayoutOptions", "SourceItem", "SourceTree", "Unusable", "read_class_list",
           "scan_class_folders", "scan_source"]
