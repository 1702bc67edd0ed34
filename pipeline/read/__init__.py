"""Read: what every backend shares on the read side: the shard byte stream (:mod:`tarstream`), the epoch plan
of samples per rank and worker (:mod:`plan`), and the decode + crop geometry (:mod:`transforms`)."""
