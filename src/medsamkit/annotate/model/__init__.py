"""The annotator's model layer: the session's one model (``segmenter``: embeddings, answers to prompts with the
click semantics, everything mode, class suggestions, hot swap) and what runs on it through the narrow
``host.ModelHost``: propagation through a volume and learn rounds (``learning``, ``learn_job``, ``versions``).
It knows nothing of images, objects, files or HTTP."""
