"""Data pipeline, in the order the data flows: ``source`` (find the samples of an ImageNet tree) → ``shard``
(clean, write, verify webdataset tars) → ``dataset`` (the typed contract between writer and readers) → ``read``
(shard stream, epoch plan, decode geometry) → ``backends`` (decode into device batches behind one contract)."""
