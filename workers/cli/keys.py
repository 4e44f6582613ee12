"""``tracer keys``: a key pair for a tcp:// aggregator (``workers.curve``)."""

from __future__ import annotations

import argparse

from .. import curve


def cmd_keys(args: argparse.Namespace) -> int:
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
