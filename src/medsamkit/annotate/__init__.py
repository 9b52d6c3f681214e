"""Interactive annotation: a local web server and page to segment, correct and save objects with a prompted
model (``medsamkit annotate``). Only the CLI imports this package.

Three layers, each importing only the one below:

- ``model``: the session's one model (``Segmenter``: embeddings, answers with the click semantics, everything
  mode, class suggestions, hot swap) and what runs on it through the narrow ``ModelHost``: propagation through
  a volume, learn rounds;
- ``session``: items behind one ``Item`` protocol (2D images, volumes), their objects with undo, every client's
  prompt sessions, saving through ``io.annotations``; ``Workspace`` is the session and returns domain objects;
- ``http``: the FastAPI app (routers, encoders, request checks, guards, lifespan) and starting a server.

Threads. Requests arrive on several server threads, but every model computation (embeddings, answers, everything
mode, a propagation run, a 3D engine step) runs on the ``Segmenter``'s one compute thread (``model.compute``:
torch on more threads than that slows every decoder call), a person's prompt before an embedding asked for
before background work: a prompt sent during a propagation run waits for the run. A learned model is loaded on a
thread that ends with the load. The learn watcher is a thread too (the learn job is a separate process that
writes no annotation file).

Locks, the one policy. Each lock guards one thing, and when several are held they are taken in this order,
never the reverse:

1. ``LearnController._lock``: a learn round's state (job process, phase); it may swap the served model (4).
2. ``Workspace.lock`` (re-entrant): the annotations in memory and their files: every change and its save, and a
   propagation run from start to save. A request that only asks the model (predict, open, everything) never
   takes it.
3. ``ClientViews._lock`` (prompt sessions, proposals): one table operation at a time, never a model call.
4. ``Segmenter._decode``: the predictor's one embedding slot and which model is served (a decoder call,
   everything mode, a swap); ``Segmenter._queue``: the embedding futures and prefetch queue, never held while
   anything is computed.
5. ``DecodedCache._lock`` (2D pixels, volumes): held while one item is read, so nothing is read twice.

Waiting for the compute thread ranks after 1-3 (a propagation run waits for it holding ``Workspace.lock``): work on
the compute thread takes only the locks of 4 and 5.
"""
