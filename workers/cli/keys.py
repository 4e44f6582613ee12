"""``tracer keys``: the trace server's API keys (``create``, ``list``, ``revoke``: kept hashed in
the store, which every ``tracer serve`` over it checks), and ``tracer keys curve``, a key pair
for a tcp:// aggregator (``workers.curve``). ``tracer keys NAME`` (the old form) is ``curve``."""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import secrets
import sys

from tracer import config

from .. import curve
from ..store import open_store

ACTIONS = ("create", "list", "revoke", "curve")
KEY_PREFIX = "tr_"
KEY_BYTES = 32
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")


def legacy(argv: list[str]) -> list[str]:
    """``argv`` with ``tracer keys [NAME] [--force]`` (the CURVE key pair, before the
    subcommands) read as ``tracer keys curve [NAME] [--force]``."""
    if len(argv) >= 1 and argv[0] == "keys" and (
            len(argv) == 1 or argv[1] not in (*ACTIONS, "-h", "--help")):
        return ["keys", "curve", *argv[1:]]
    return argv


def add_arguments(commands: argparse._SubParsersAction) -> None:
    """``tracer keys``'s subcommands and their arguments."""
    keys = commands.add_parser(
        "keys", help="API keys of the trace server; key pairs for a tcp:// aggregator",
        description="API keys for the trace server's ingest API (aggregators on other hosts "
                    "upload with one: TRACER_API_KEY), kept hashed in the store: create, list, "
                    "revoke. And `tracer keys curve NAME`: a CURVE key pair for a tcp:// "
                    "aggregator (`tracer keys NAME` still means that).")
    actions = keys.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    create = actions.add_parser(
        "create", help="make an API key, print it once, keep its hash in the store",
        description="Make a new API key (tr_ and 32 random bytes, URL-safe base64) and print it, "
                    "once: the store keeps only its SHA-256. Every tracer serve over the store "
                    "takes it within seconds, as Authorization: Bearer KEY on the ingest API "
                    "(/api/v1/). With --project, the key may write to those projects only "
                    "(403 for a row of another).")
    create.add_argument("--name", required=True, help="the key's name (letters, digits, . _ @ "
                                                      "-; at most 100): what lists, revokes "
                                                      "and logs show instead of the key")
    create.add_argument("--project", action="append", metavar="PROJECT",
                        help="a project the key may write to (repeat for more; default: any)")
    _store(create)

    listing = actions.add_parser(
        "list", help="list the API keys of the store (never the keys themselves)",
        description="List the API keys recorded in the store: name, projects, created, revoked. "
                    "The keys themselves are not stored: they cannot be shown again.")
    _store(listing)

    revoke = actions.add_parser(
        "revoke", help="revoke an API key",
        description="Revoke the API key NAME: every tracer serve over the store refuses it "
                    "within seconds (401).")
    revoke.add_argument("name", metavar="NAME", help="the key's name")
    _store(revoke)

    pair = actions.add_parser(
        "curve", help="make a key pair for a tcp:// aggregator (ZeroMQ CURVE)",
        description="Write a new CURVE key pair (files mode 0600): NAME.key_secret for `tracer "
                    "aggregator --secret-key`, and NAME.key, whose public key senders are given "
                    "(TRACER_AGGREGATOR_KEY or init_logger(aggregator_key=...)). Only senders "
                    "that know it can connect; the traffic is encrypted.")
    pair.add_argument("name", nargs="?", default="aggregator", metavar="NAME",
                      help="path and name of the files, without suffix (default: %(default)s)")
    pair.add_argument("--force", action="store_true", help="replace existing files")


def _store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="the trace server's store: a path or postgresql://... "
                                   "(default: TRACER_STORE or .tracer/traces.db)")


def new_key() -> str:
    """A new API key: ``tr_`` and 32 random bytes, URL-safe base64 without padding."""
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode() \
        .rstrip("=")


def key_digest(key: str) -> str:
    """What the store keeps of a key: its SHA-256, 64 hex digits."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def cmd_keys(args: argparse.Namespace) -> int:
    """``tracer keys ACTION``."""
    if args.action == "create":
        return cmd_create(args)
    if args.action == "list":
        return cmd_list(args)
    if args.action == "revoke":
        return cmd_revoke(args)
    return cmd_curve(args)


def cmd_create(args: argparse.Namespace) -> int:
    """Make a key, record its hash, print it once."""
    if not NAME.fullmatch(args.name):
        raise ValueError(f"--name {args.name!r:.120}: letters, digits, . _ @ - (at most 100, "
                         "starting with a letter or digit)")
    projects = None
    if args.project:
        for project in args.project:
            if not project or "\x1f" in project or len(project) > 1000:
                raise ValueError(f"--project {project!r:.120}: not a project name")
        projects = sorted(set(args.project))
    key = new_key()
    with open_store(args.store) as writer:
        writer.add_api_key(args.name, key_digest(key), projects)
        shown = writer.location
    print(key)
    print(f"tracer keys: API key {args.name!r} made in {shown}"
          + (f" for project{'s' if len(projects) > 1 else ''} {', '.join(projects)}"
             if projects else " (any project)")
          + ". It is shown once: the store keeps only its hash. Give it to the uploading "
            "aggregators as TRACER_API_KEY.", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """The keys of the store, one a line (never a key)."""
    with open_store(args.store, readonly=True) as reader:
        keys = reader.api_keys()
    if not keys:
        print(f"no API keys in {config.without_password(args.store)} (tracer keys create "
              "--name NAME makes one)", file=sys.stderr)
        return 0
    width = max(4, *(len(k["name"]) for k in keys))
    print(f"{'NAME':<{width}}  {'CREATED':<32}  {'REVOKED':<32}  PROJECTS")
    for k in keys:
        projects = ", ".join(k["projects"]) if k["projects"] is not None else "(any)"
        print(f"{k['name']:<{width}}  {k['created']:<32}  {k['revoked'] or '-':<32}  "
              f"{projects}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke a key by name."""
    with open_store(args.store) as writer:
        try:
            revoked = writer.revoke_api_key(args.name)
        except KeyError:
            raise ValueError(f"no API key named {args.name!r:.120} in {writer.location} "
                             "(tracer keys list)") from None
    print(f"API key {args.name!r} " + ("revoked" if revoked else "was revoked already"))
    return 0


def cmd_curve(args: argparse.Namespace) -> int:
    """Write a new key pair and say how to use it; 2 (the caller's) if files are in the way."""
    try:
        secret_path, public_path, public = curve.make_pair(args.name, args.force)
    except FileExistsError as exc:
        raise ValueError(f"{exc.filename} exists; give another NAME or --force to replace "
                         "it") from None
    print(f"secret key: {secret_path} (mode 0600: for the aggregator only)")
    print(f"public key: {public_path} (mode 0600 too: whoever holds it can send)")
    print()
    print(f"  tracer aggregator --bind tcp://ADDRESS:5557 --secret-key {secret_path}")
    print(f"  TRACER_AGGREGATOR_KEY='{public}'   # for every sender")
    print(f"  tracer.init_logger(..., aggregator_key='{public}')   # or in code")
    return 0

