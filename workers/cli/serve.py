"""``tracer serve``: the trace server over a store (``workers.server``), under uvicorn, pruning
it periodically with ``--prune-older-than`` (``workers.server.retention``); and ``tracer
migrate``, which brings a store's schema up to date (what the server needs)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from tracer import config as tracer_config

from ..store import open_store
from ..store.sqlite import SUMMARIES_VERSION
from . import migrate as copy
from . import prune

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8585
PRUNE_EVERY = 3600.0  # seconds between two prunes of --prune-older-than


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def add_arguments(commands: argparse._SubParsersAction) -> None:
    """``tracer serve`` and ``tracer migrate``'s arguments."""
    serve = commands.add_parser(
        "serve", help="serve the trace viewer and its JSON API over a store",
        description="Serve the trace viewer (the pages permalinks open) and a read-only JSON "
                    "API over the store, at http://HOST:PORT/. It binds 127.0.0.1 by default; "
                    "another address needs an API key (--api-key or TRACER_API_KEY), which "
                    "every page and API call must then present (Authorization: Bearer KEY, or "
                    "the browser's sign-in form). Needs the server extra: pip install "
                    "'tracer[server]'.")
    serve.add_argument("--store", help="store to read (default: TRACER_STORE or "
                                       ".tracer/traces.db)")
    serve.add_argument("--host", default=DEFAULT_HOST,
                       help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help="port to bind (default: %(default)s)")
    serve.add_argument("--api-key", metavar="KEY",
                       help="require this key on every request (default: TRACER_API_KEY)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a non-loopback address without an API key (anyone who can "
                            "reach it reads every trace)")
    serve.add_argument("--prune-older-than", metavar="DURATION",
                       type=prune.duration("--prune-older-than"),
                       help="also prune the store (as tracer prune --older-than DURATION does) "
                            "at start and then every --prune-every, in a thread with a store "
                            "writer of its own")
    serve.add_argument("--prune-every", metavar="DURATION", type=prune.duration("--prune-every"),
                       help="how often to prune (with --prune-older-than; default: 1h)")
    migrate = commands.add_parser(
        "migrate", help="bring a store's schema up to date, or copy a store into another",
        description="Upgrade the store to the schema this tracer writes (aggregators do it "
                    "when they open a store; tracer serve needs it done). Building the trace "
                    "summaries of an older store reads every row once. With --from and --to: "
                    "copy the store SRC into DST, across backends (sqlite:///path or a path, "
                    "postgresql://...): every row as stored, the containers, the aggregator "
                    "runs, the attachment records and their blobs; DST is made if missing and "
                    "must have no rows.")
    migrate.add_argument("--store", help="store to upgrade (default: TRACER_STORE or "
                                         ".tracer/traces.db)")
    migrate.add_argument("--from", dest="source", metavar="SRC",
                         help="store to copy from (with --to)")
    migrate.add_argument("--to", dest="destination", metavar="DST",
                         help="store to copy into: new, or without rows (with --from)")


def cmd_serve(args: argparse.Namespace) -> int:
    """``tracer serve``: 0 when stopped (Ctrl-C, SIGTERM); 2 for what keeps it from serving."""
    key = args.api_key or os.environ.get("TRACER_API_KEY") or None
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: not a port")
    if not is_loopback(args.host) and key is None:
        if not args.insecure:
            raise ValueError(
                f"--host {args.host} is not a loopback address: anyone who reaches it would read "
                "every trace. Give an API key (--api-key KEY or TRACER_API_KEY), or --insecure "
                "to serve without one")
        print(f"tracer serve: warning: serving {args.host} without an API key (--insecure): "
              "anyone who reaches it reads every trace", file=sys.stderr)
    if args.prune_every is not None and args.prune_older_than is None:
        raise ValueError("--prune-every goes with --prune-older-than")
    database = args.store.startswith(tracer_config.POSTGRES_SCHEMES)
    if os.path.exists(args.store) or database:
        with open_store(args.store, readonly=True) as reader:
            found = reader.schema_version()
        if not database and found < SUMMARIES_VERSION:  # (PostgreSQL's version 1 has them)
            raise ValueError(
                f"store {reader.location} has schema version {found}; the trace server needs "
                f"version {SUMMARIES_VERSION}: run `tracer migrate --store {args.store}` first")
    else:
        print(f"tracer serve: no store at {args.store} yet: its traces appear once a traced "
              "program writes there", file=sys.stderr)
    try:
        import uvicorn

        from ..server.app import make_app
    except ImportError as exc:
        raise ValueError(f"the server's dependencies are missing ({exc.name}): "
                         "pip install 'tracer[server]'") from None
    app = make_app(args.store, key)
    host = f"[{args.host}]" if ":" in args.host else args.host
    shown = tracer_config.without_password(args.store)
    print(f"tracer serve: {shown} at http://{host}:{args.port}/ (Ctrl-C stops it)",
          flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            access_log=False, server_header=False, proxy_headers=False,
                            lifespan="on")
    server = uvicorn.Server(config)
    pruning = None
    if args.prune_older_than is not None:
        from ..server.retention import PruneThread

        pruning = PruneThread(args.store, args.prune_older_than,
                              args.prune_every or PRUNE_EVERY)
        pruning.start()
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind: said on stderr already
        return 2 if exc.code else 0
    except KeyboardInterrupt:
        return 0
    finally:
        if pruning is not None:
            pruning.stop()
    return 0 if server.started else 2


def cmd_migrate(args: argparse.Namespace) -> int:
    """``tracer migrate``: the store at its newest schema (made if missing); with ``--from``
    and ``--to``, a copy of one store into another (``workers.cli.migrate``)."""
    if args.source is not None or args.destination is not None:
        if args.source is None or args.destination is None:
            raise ValueError("--from and --to go together")
        return copy.cmd_copy(tracer_config.store_location(args.source, "--from"),
                             tracer_config.store_location(args.destination, "--to"))
    with open_store(args.store) as writer:
        before = None
        try:  # (a missing file, a database without tables: no store yet)
            with open_store(args.store, readonly=True) as reader:
                before = reader.schema_version()
        except FileNotFoundError:
            pass
        after = writer.schema_version()
        shown = writer.location  # (a database's URL without its password)
    if before == after:
        print(f"store {shown} is at schema version {after} already")
    else:
        print(f"store {shown} upgraded to schema version {after}"
              + (f" (was {before})" if before is not None else ""))
    return 0
