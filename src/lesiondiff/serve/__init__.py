"""``lesiondiff serve``: a local web page that segments one uploaded image at a time through the same code path as
``lesiondiff predict`` (``app.py``: the FastAPI app and its JSON API; ``jobs.py``: the one-worker job queue;
``uploads.py``: size limits, file names and decoding of uploads; ``hosts.py``: the Host and Origin checks;
``catalog.py``: the models offered; ``static/``: the page, with no asset from outside the machine)."""
