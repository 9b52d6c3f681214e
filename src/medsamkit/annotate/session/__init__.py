"""The annotator's session layer: items behind one image/volume protocol (``items``, ``volumes``), their objects
with undo (``state``), every client's prompt sessions (``prompting``), what records say (``records``), saving
through ``io.annotations``, and ``workspace.Workspace``, the session itself. It uses the model layer below and
knows nothing of HTTP: operations return domain objects (``results``)."""
