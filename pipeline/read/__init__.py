"""Read: what every backend shares on the read side: loading a shard folder, checked (:mod:`info`), the shard byte
stream (:mod:`tarstream`), the epoch plan of samples per rank and worker (:mod:`plan`), the decoders
(:mod:`transforms`) with the crop geometry (:mod:`geometry`) and EXIF orientation (:mod:`orientation`) they
apply, and the check of shards against their index and manifest before a reader that cannot skip damage opens
them (:mod:`shardcheck`)."""
