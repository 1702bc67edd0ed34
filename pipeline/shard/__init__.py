"""Shard: turn a scanned source into webdataset shards, once, offline. :mod:`config` holds a run's options,
:mod:`clean` cleans one image (reject it or convert it to an RGB JPEG), :mod:`writer` writes one tar + its ``.idx``
atomically, :mod:`plan` cuts a source tree into shard tasks and matches their resume records, :mod:`pool` writes
the tasks in worker processes, :mod:`summary` counts what a run did, :mod:`run` drives a run from a source tree to
a complete folder, :mod:`verify` checks a finished shard folder."""
