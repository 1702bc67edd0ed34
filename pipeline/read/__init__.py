"""Read: what every backend shares on the read side: the shard byte stream (:mod:`tarstream`), the epoch plan
of samples per rank and worker (:mod:`plan`), the decode + crop geometry (:mod:`transforms`), and the check of
shards against their index and manifest before a reader that cannot skip damage opens them (:mod:`shardcheck`)."""
