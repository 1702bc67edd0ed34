"""Data pipeline: shard writer, shard readers and decode backends."""
