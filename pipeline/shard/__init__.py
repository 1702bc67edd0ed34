"""Shard: turn a scanned source into webdataset shards, once, offline. :mod:`clean` cleans one image (reject it
or convert it to an RGB JPEG), :mod:`writer` writes one tar + its ``.idx`` atomically, :mod:`run` plans, runs
and resumes the worker pool over a source tree, :mod:`verify` checks a finished shard folder."""
