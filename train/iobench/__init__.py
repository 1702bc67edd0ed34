"""io-bench: where the input pipeline's time goes and whether it holds the accelerator back: storage read rate
(:mod:`storage`), per-stage cost through the backends' own stage hooks (:mod:`stages`), the loader-only worker
sweep, compute-only and end-to-end runs (:mod:`run`), the verdict (:mod:`verdict`) and the report
(:mod:`report`)."""
