"""``nebula keys create|list|revoke|update`` and ``nebula usage``: API keys at run time.

A key's secret is printed once, by ``create``, and never stored: etcd keeps its SHA-256
(an :class:`~nebula_common.records.ApiKey` at ``/keys/<hash prefix>``), which every gateway
started with ``--watch-keys on`` follows, so a revocation or a change applies within a second
without a restart. ``nebula usage`` reads the gateways' usage table from their state store
(``--state-url``: the Redis they share, or a gateway's SQLite file).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from nebula_common.keys import Keys
from nebula_common.records import BUDGET_PERIODS, ApiKey, RecordCache
from nebula_common.store import EtcdStore

SECRET_PREFIX = "sk-nebula-"
_LABEL = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")
"""Names and priorities travel in headers (x-nebula-tenant, x-nebula-priority)."""


class KeysCliError(Exception):
    """A one-line, user-facing error of a keys command."""


Command = Callable[[EtcdStore, Keys, argparse.Namespace], Awaitable[None]]


def add_commands(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add ``keys`` (with its subcommands) and ``usage`` through cli.py's ``command``."""
    k = command("keys", "API keys the gateways accept (create, list, revoke, update)")
    sub = k.add_subparsers(dest="keys_command", metavar="KEYS_COMMAND")
    sub.required = True
    parent = k.__class__(add_help=False)
    # the etcd flags after `keys` (they are SUPPRESS there) also work after the subcommand
    for action in k._actions:
        if action.option_strings and action.dest != "help":
            parent._add_action(action)

    def limits(p: argparse.ArgumentParser) -> None:
        p.add_argument("--models", default=None,
                       help="comma-separated model names or uids the key may use (default: all)")
        p.add_argument("--rpm", type=int, default=None, help="requests per minute")
        p.add_argument("--tpm", type=int, default=None, help="tokens per minute")
        p.add_argument("--max-concurrency", type=int, default=None,
                       help="requests served at once")
        p.add_argument("--budget-tokens", type=int, default=None,
                       help="tokens per --budget-period (prompt + completion)")
        p.add_argument("--budget-period", choices=list(BUDGET_PERIODS), default=None)
        p.add_argument("--priority", default=None,
                       help="priority class handed to the router's policy")

    c = sub.add_parser("create", help="issue a key (its secret is printed once)",
                       parents=[parent])
    c.add_argument("name")
    limits(c)
    ls = sub.add_parser("list", help="keys and their limits", parents=[parent])
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--all", action="store_true", help="revoked keys too")
    r = sub.add_parser("revoke", help="refuse a key from now on (every gateway, within 1 s)",
                       parents=[parent])
    r.add_argument("key", help="the key's name or id")
    u = sub.add_parser("update", help="change a key's limits", parents=[parent])
    u.add_argument("key", help="the key's name or id")
    limits(u)

    us = command("usage", "tokens used per key and model (from the gateways' state store)")
    us.add_argument("--state-url", required=True,
                    help="redis://HOST:PORT[/DB] the gateways share, or sqlite:///PATH of "
                         "one gateway's state file (<state-dir>/state.db)")
    us.add_argument("--json", action="store_true", help="machine-readable output")


def apply_limits(record: ApiKey, args: argparse.Namespace) -> None:
    """Copy the limits given on the command line onto ``record``, checking each."""
    if args.models is not None:
        record.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for flag, attr in (("rpm", "rpm"), ("tpm", "tpm"), ("max_concurrency", "concurrency"),
                       ("budget_tokens", "budget_tokens")):
        value = getattr(args, flag)
        if value is not None:
            if value < 0:
                raise KeysCliError(f"--{flag.replace('_', '-')} must not be negative")
            setattr(record, attr, value)
    if args.budget_period is not None:
        record.budget_period = args.budget_period
    if args.priority is not None:
        if args.priority and not _LABEL.match(args.priority):
            raise KeysCliError("--priority is 1-64 of A-Z a-z 0-9 . _ : @ -")
        record.priority = args.priority
    if record.budget_tokens and not record.budget_period:
        raise KeysCliError("--budget-tokens needs --budget-period day|month")
    if record.budget_period and not record.budget_tokens:
        record.budget_period = ""


async def read_keys(store: EtcdStore, keys: Keys) -> dict[str, tuple[ApiKey, int]]:
    """Every valid key record by key, with its mod_revision."""
    kvs, _ = await store.get_prefix(keys.api_keys)
    cache = RecordCache(ApiKey)
    out: dict[str, tuple[ApiKey, int]] = {}
    for kv in kvs:
        record = cache.get(kv.key, kv.value)
        if record is not None:
            out[kv.key] = (record, kv.mod_revision)
    return out


def find(records: dict[str, tuple[ApiKey, int]], keys: Keys, which: str
         ) -> tuple[str, ApiKey, int]:
    """The one record named ``which`` (an id, or a name of a key not revoked)."""
    direct = records.get(keys.api_key(which))
    if direct is not None:
        return keys.api_key(which), *direct
    named = [(k, r, rev) for k, (r, rev) in records.items()
             if r.name == which and not r.revoked]
    if not named:
        raise KeysCliError(f"no key named {which!r} (see `nebula keys list`)")
    if len(named) > 1:
        raise KeysCliError(f"several keys are named {which!r}: give its id")
    return named[0]


async def cmd_create(store: EtcdStore, keys: Keys, args: argparse.Namespace) -> None:
    if not _LABEL.match(args.name) or args.name == "anonymous":
        raise KeysCliError("a key name is 1-64 of A-Z a-z 0-9 . _ : @ - and not 'anonymous'")
    existing = await read_keys(store, keys)
    if any(r.name == args.name and not r.revoked for r, _ in existing.values()):
        raise KeysCliError(f"a key named {args.name!r} exists already (revoke it first)")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(key_hash=hashlib.sha256(secret.encode()).hexdigest(), name=args.name)
    apply_limits(record, args)
    if not await store.put_if_revision(keys.api_key(record.key_id), record.to_json(), 0):
        raise KeysCliError("a key with that id exists already; run the command again")
    print(f"created key {record.name} (id {record.key_id}); its secret, shown only now:",
          flush=True)
    print(secret, flush=True)


def _limits_text(r: ApiKey) -> list[str]:
    budget = f"{r.budget_tokens}/{r.budget_period}" if r.budget_tokens else "-"
    return [",".join(r.models) or "*", str(r.rpm or "-"), str(r.tpm or "-"),
            str(r.concurrency or "-"), budget, r.priority or "-"]


async def cmd_list(store: EtcdStore, keys: Keys, args: argparse.Namespace) -> None:
    records = sorted((r for r, _ in (await read_keys(store, keys)).values()
                      if args.all or not r.revoked), key=lambda r: (r.name, r.created_at))
    if args.json:
        rows = []
        for r in records:
            data = r.to_dict()
            data.pop("schema", None)
            data["id"] = r.key_id
            rows.append(data)
        print(json.dumps(rows, indent=2))
        return
    now = time.time()
    headers = ["id", "name", "models", "rpm", "tpm", "concurrency", "budget", "priority",
               "age", "status"]
    table = [[r.key_id, r.name, *_limits_text(r), _age(now - r.created_at),
              "revoked" if r.revoked else "active"] for r in records]
    print(_table(headers, table))


async def _update(store: EtcdStore, keys: Keys, which: str,
                  change: Callable[[ApiKey], None]) -> ApiKey:
    for _ in range(10):
        key, record, revision = find(await read_keys(store, keys), keys, which)
        change(record)
        if await store.put_if_revision(key, record.to_json(), revision):
            return record
    raise KeysCliError(f"could not update {which!r}: it kept changing under us")


async def cmd_revoke(store: EtcdStore, keys: Keys, args: argparse.Namespace) -> None:
    def revoke(record: ApiKey) -> None:
        if record.revoked:
            raise KeysCliError(f"key {record.key_id} ({record.name}) is revoked already")
        record.revoked_at = time.time()
    record = await _update(store, keys, args.key, revoke)
    print(f"revoked key {record.name} (id {record.key_id})", flush=True)


async def cmd_update(store: EtcdStore, keys: Keys, args: argparse.Namespace) -> None:
    def update(record: ApiKey) -> None:
        if record.revoked:
            raise KeysCliError(f"key {record.key_id} ({record.name}) is revoked")
        apply_limits(record, args)
    record = await _update(store, keys, args.key, update)
    print(f"updated key {record.name} (id {record.key_id}): "
          + " ".join(f"{h}={v}" for h, v in zip(
              ["models", "rpm", "tpm", "concurrency", "budget", "priority"],
              _limits_text(record), strict=True)), flush=True)


KEYS_COMMANDS: dict[str, Command] = {
    "create": cmd_create, "list": cmd_list, "revoke": cmd_revoke, "update": cmd_update,
}


async def cmd_keys(store: EtcdStore, keys: Keys, args: argparse.Namespace) -> None:
    await KEYS_COMMANDS[args.keys_command](store, keys, args)


def cmd_usage(args: argparse.Namespace) -> None:
    """Usage rows from the state store; needs no etcd."""
    try:
        from nebula_gateway.state import StateError, read_usage
    except ImportError:
        raise KeysCliError("nebula usage needs the nebula-gateway package installed "
                           "(run it where a gateway runs)") from None
    try:
        rows = asyncio.run(read_usage(args.state_url))
    except (StateError, ValueError) as exc:
        raise KeysCliError(str(exc)) from None
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=2))
        return
    print(_table(["key", "model", "requests", "prompt tokens", "completion tokens"],
                 [[r.key, r.model, str(r.requests), str(r.prompt_tokens),
                   str(r.completion_tokens)] for r in rows]))


def _age(seconds: float) -> str:
    from .cli import _age as age  # (cli imports this module: looked up when called)
    return age(seconds)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    from .cli import _table as table  # one table format for the whole CLI
    return table(headers, rows)
