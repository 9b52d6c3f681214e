"""The annotator's HTTP layer (FastAPI; the only part of medsamkit that imports it): the app and its lifespan
(``app``), what every request passes (``guards``: Host allow-list, token, body limit, security headers, one-line
errors), request checks (``requests``), the encoders of domain objects into JSON and PNGs (``encoders``), one
router per concern (``page``, ``items``, ``prompts``, ``objects``, ``volumes``, ``learn``), and starting a
server (``launch``). It talks to the session layer only."""
