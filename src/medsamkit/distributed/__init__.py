"""Scale-out on Dask distributed: a case (image or volume) is one task, each worker loads the model once, the
driver appends the rows to the run's results store as tasks finish (docs/architecture.md, "distributed")."""
