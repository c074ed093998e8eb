"""``tinysora serve``: a web page and a JSON API with a persistent job queue.

FastAPI app (``app.py``: ``create_app(ServeConfig(...))``), jobs in SQLite
(``store.py``), one worker thread running the pipeline (``worker.py``), a plain
HTML/JS/CSS page (``static/``), and the settings (``config.py``, no FastAPI import).
"""
