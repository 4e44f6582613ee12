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


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _size(text: str) -> int:
    """A size in bytes: ``1048576``, ``512K``, ``32M``, ``1G``."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in ("K", "M", "G") else ""
    number = value[:len(value) - len(unit)]
    if not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a size in bytes (1048576, 512K, 32M, 1G)")
    return int(number) * _UNITS[unit]


def add_arguments(commands: argparse._SubParsersAction) -> None:
    """``tracer serve`` and ``tracer migrate``'s arguments."""
    serve = commands.add_parser(
        "serve", help="serve the trace viewer and its JSON API over a store",
        description="Serve the trace viewer (the pages permalinks open), its read-only JSON "
                    "API over the store, and the ingest API (/api/v1/: aggregators on other "
                    "hosts upload rows, with an API key: Authorization: Bearer KEY), at "
                    "http://HOST:PORT/. It binds 127.0.0.1 by default; "
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
    serve.add_argument("--max-body", type=_size, default=32 * 1024 * 1024, metavar="BYTES",
                       help="the ingest API's limit on a request body as sent (413 above it; "
                            "a body may decompress to 4 times this, no more); a number of "
                            "bytes, or with K, M, G (default: 32M)")
    serve.add_argument("--max-blob", type=_size, default=512 * 1024 * 1024, metavar="BYTES",
                       help="the ingest API's limit on one attachment blob (PUT "
                            "/api/v1/blobs/SHA256; 413 above it), as --max-body (default: "
                            "512M)")
    serve.add_argument("--ingest-queue", type=int, default=100_000, metavar="ROWS",
                       help="rows the ingest API's write queue holds, waiting and being "
                            "written; a batch that does not fit is answered 429 with "
                            "Retry-After (default: %(default)s)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a non-loopback address without an API key (anyone who can "
                            "reach it reads every trace)")
    serve.add_argument("--tls-cert", metavar="PEM",
                       help="serve HTTPS with this certificate (chain) file; with --tls-key")
    serve.add_argument("--tls-key", metavar="PEM",
                       help="the certificate's private key file; with --tls-cert")
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
    if args.ingest_queue < 1:
        raise ValueError(f"--ingest-queue {args.ingest_queue}: at least 1 row")
    if not is_loopback(args.host) and key is None:
        if not args.insecure:
            raise ValueError(
                f"--host {args.host} is not a loopback address: anyone who reaches it would read "
                "every trace. Give an API key (--api-key KEY or TRACER_API_KEY), or --insecure "
                "to serve without one")
        print(f"tracer serve: warning: serving {args.host} without an API key (--insecure): "
              "anyone who reaches it reads every trace", file=sys.stderr)
    tls = _tls_files(args)
    if not is_loopback(args.host) and tls is None:
        print(f"tracer serve: warning: serving {args.host} over plain HTTP: API keys and "
              "traces cross the network in clear (--tls-cert and --tls-key serve HTTPS)",
              file=sys.stderr)
    if args.prune_every is not None and args.prune_older_than is None:
        raise ValueError("--prune-every goes with --prune-older-than")
    database = args.store.startswith(tracer_config.POSTGRES_SCHEMES)
    found = None
    if os.path.exists(args.store) or database:
        try:
            with open_store(args.store, readonly=True) as reader:
                found = reader.schema_version()
        except FileNotFoundError:
            if not database:
                raise
            # A database without a store's tables yet: the first upload makes them.
        if found is not None and not database and found < SUMMARIES_VERSION:
            raise ValueError(  # (PostgreSQL's version 1 has them)
                f"store {reader.location} has schema version {found}; the trace server needs "
                f"version {SUMMARIES_VERSION}: run `tracer migrate --store {args.store}` first")
    if found is None:
        print(f"tracer serve: no store at {tracer_config.without_password(args.store)} yet: "
              "its traces appear once a traced program writes there (or uploads here)",
              file=sys.stderr)
    try:
        import uvicorn

        from ..server.app import make_app
    except ImportError as exc:
        raise ValueError(f"the server's dependencies are missing ({exc.name}): "
                         "pip install 'tracer[server]'") from None
    app = make_app(args.store, key, max_body=args.max_body, max_blob=args.max_blob,
                   ingest_queue=args.ingest_queue)
    host = f"[{args.host}]" if ":" in args.host else args.host
    shown = tracer_config.without_password(args.store)
    scheme = "http" if tls is None else "https"
    print(f"tracer serve: {shown} at {scheme}://{host}:{args.port}/ (Ctrl-C stops it)",
          flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            access_log=False, server_header=False, proxy_headers=False,
                            lifespan="on", ssl_certfile=tls and tls[0], ssl_keyfile=tls and tls[1])
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


def _tls_files(args: argparse.Namespace) -> tuple[str, str] | None:
    """``(certificate, key)`` files for HTTPS, checked readable; None for plain HTTP."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        return None
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if not os.access(path, os.R_OK):
            raise ValueError(f"{option} {path}: not a readable file")
    import ssl

    try:  # a wrong pair fails here with a message, not inside uvicorn with a traceback
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.tls_cert,
                                                                            args.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"--tls-cert {args.tls_cert} / --tls-key {args.tls_key}: {exc}") from None
    return args.tls_cert, args.tls_key


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
