"""Training, in the order a run goes: ``config`` (the schema) → ``build`` (session: loaders, model, optimiser) →
``loop`` (step, epoch, evaluate) timed by ``clock`` → ``metrics`` (FlagPerf's formulas) → ``report`` (RunReport);
beside them ``checkpoint``, ``distributed``, ``precision``, ``recipe``, ``model``, ``memory``, ``steplog``, and
``iobench/`` (where the input pipeline's time goes)."""
