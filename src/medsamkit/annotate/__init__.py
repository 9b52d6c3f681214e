"""Interactive annotation: a local web server (FastAPI) and page to segment, correct and save objects with a
prompted model (``medsamkit annotate``). Only the CLI imports this package."""
