"""``lesiondiff serve``: a local web page that segments one image at a time with a trained or shipped model,
through the code path of ``lesiondiff predict`` (the server: ``lesiondiff/serve/``)."""

from __future__ import annotations

import socket
from pathlib import Path

from ..errors import LesiondiffError
from .common import add_run_source, run_source


def register(sub) -> None:
    """Add this module's commands to the ``lesiondiff`` sub-command parsers."""
    sv = sub.add_parser("serve", help="open a local web page: drop an image, see its mask, uncertainty maps and "
                                      "every sample",
                        description="Serve a page on this machine where an image is segmented with a model of the "
                                    "picker: every shipped model (lesiondiff models) and --run DIR. Its files are "
                                    "those lesiondiff predict writes, with the same settings and seed.")
    add_run_source(sv, required=False)
    sv.add_argument("--host", default="127.0.0.1",
                    help="the address to listen on; 127.0.0.1 is this machine only (0.0.0.0 would open the page, "
                         "which has no login, to the network)")
    sv.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                    help="also answer requests addressed to NAME (a host name or address others reach this "
                         "server by, with --host 0.0.0.0); repeatable. Requests for any other Host are refused, "
                         "against DNS rebinding")
    sv.add_argument("--port", type=int, default=8000, help="the port to listen on")
    sv.add_argument("--device", default=None)
    sv.add_argument("--max-upload-mb", type=float, default=25, help="largest image file accepted, in MB")
    sv.add_argument("--max-megapixels", type=float, default=40,
                    help="largest image accepted, in decoded megapixels (read from the file's header)")
    sv.add_argument("--max-queue", type=int, default=8,
                    help="most jobs queued or running at once; more are refused until one has finished")


def check_port(host: str, port: int) -> None:
    """A one-line error when ``host:port`` cannot be listened on (in use, or not an address of this machine)."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise LesiondiffError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                              "or --host") from None


def cmd_serve(args) -> int:
    import uvicorn

    from ..engine.predict import Predictor
    from ..serve.app import create_app
    from ..serve.catalog import catalog
    from ..serve.hosts import answered
    from ..shipped import model_dir, model_names

    chosen = run_source(args) if (args.run or args.model) else None  # an unknown --model fails here
    models = catalog({name: model_dir(name) for name in model_names()}, Path(args.run) if args.run else None)
    default = args.model or (next(iter(models)) if chosen is not None else None)
    check_port(args.host, args.port)
    if chosen is not None:  # loaded once here, so that a broken run or model stops serve with one line
        Predictor.from_run(chosen, "best", args.device)
    app = create_app(models, default, args.device, max_upload=int(args.max_upload_mb * 2**20),
                     max_pixels=int(args.max_megapixels * 1e6), max_queue=args.max_queue,
                     allowed_hosts=[args.host, *args.allow_host])
    if args.host in ("0.0.0.0", "::"):
        names = ", ".join(answered([args.host, *args.allow_host]))
        print(f"note: --host {args.host} opens the page, which has no login, to the network; it answers only "
              f"requests addressed to {names}: give --allow-host NAME for each name or address others reach "
              "it by", flush=True)
    print(f"lesiondiff serve: http://{args.host}:{args.port}/ with {', '.join(models)} (Ctrl+C stops it)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


COMMANDS = {"serve": cmd_serve}
