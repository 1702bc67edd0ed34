"""io-bench: where the input pipeline's time goes and whether it holds the accelerator back. :mod:`run` runs it
(:func:`~train.iobench.run.run_io_bench`) with the options of :mod:`config`: storage read rate (:mod:`storage`),
per-stage cost through the backends' own stage probes and the host→device copy (:mod:`stages`), the loader-only
worker sweep (:mod:`sweep`), compute-only and end-to-end training runs (:mod:`e2e`), the evidence for the verdict
of :mod:`train.verdict` (:mod:`evidence`), into an :mod:`results` object written out by :mod:`report`; what a run
resolves first is in :mod:`setup`, its numbered progress in :mod:`steps`."""
