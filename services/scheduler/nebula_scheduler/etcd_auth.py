"""``nebula-etcd-auth``: turn etcd auth on with one least-privilege user per Nebula role.

Idempotent, so a deployment runs it before every start (compose's ``etcd-auth`` service):
roles and users are added when missing, each role's grants (``nebula_common.etcd_access``)
are applied, each user's password is set to the one in ``--credentials-dir/<user>``
(generated there, mode 0600, the first time), and auth is enabled with a ``root`` user whose
password is ``<dir>/root``. The roles then read their own file through
``--etcd-username`` / ``--etcd-password-file``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aetcd.exceptions as etcd_errors
import grpc
from aetcd import rpc
from aetcd.rpc import auth_pb2

from nebula_common.config import Parser, add_etcd_flags, etcd_config, fail, keys
from nebula_common.etcd_access import ROLES, grants
from nebula_common.store import EtcdConfig, EtcdStore, StoreUnavailable

PROG = "nebula-etcd-auth"
ROOT = "root"


def password_for(directory: Path, user: str) -> str:
    """The user's password from ``directory``, created (random, 0600) when missing."""
    path = directory / user
    if path.exists():
        return path.read_text().strip()
    directory.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def _exists(exc: grpc.aio.AioRpcError) -> bool:
    return "already exists" in (exc.details() or "") or "already granted" in (exc.details() or "")


class AuthAdmin:
    """etcd's Auth API on one connected aetcd client (aetcd wraps only Authenticate)."""

    def __init__(self, client: Any):
        self.stub = rpc.AuthStub(client.channel)
        self.metadata = client.metadata
        self.timeout = 10.0

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any,
                    tolerate_exists: bool = False) -> None:
        try:
            await method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            if not (tolerate_exists and _exists(exc)):
                raise

    async def ensure_role(self, role: str) -> None:
        await self._call(self.stub.RoleAdd, rpc.AuthRoleAddRequest(name=role), True)

    async def grant(self, role: str, key: str, range_end: bytes, perm: int) -> None:
        permission = auth_pb2.Permission(permType=perm, key=key.encode(), range_end=range_end)
        await self._call(self.stub.RoleGrantPermission,
                         rpc.AuthRoleGrantPermissionRequest(name=role, perm=permission))

    async def has_password(self, user: str, password: str) -> bool:
        """True when ``user`` already logs in with ``password`` (auth on, nothing to change)."""
        try:
            await self.stub.Authenticate(rpc.AuthenticateRequest(name=user, password=password),
                                         timeout=self.timeout)
        except grpc.aio.AioRpcError:
            return False
        return True

    async def ensure_user(self, user: str, password: str, role: str) -> None:
        await self._call(self.stub.UserAdd,
                         rpc.AuthUserAddRequest(name=user, password=password), True)
        # Changing a password revokes the user's tokens (a running role would reconnect):
        # change it only when it differs from the file's.
        if not await self.has_password(user, password):
            await self._call(self.stub.UserChangePassword,
                             rpc.AuthUserChangePasswordRequest(name=user, password=password))
        await self._call(self.stub.UserGrantRole,
                         rpc.AuthUserGrantRoleRequest(user=user, role=role), True)

    async def enable(self) -> None:
        await self._call(self.stub.AuthEnable, rpc.AuthEnableRequest())


async def apply(config: EtcdConfig, prefix_keys: Any, directory: Path) -> list[str]:
    """Apply users, roles and grants; returns what was done, one line each."""
    root_password = password_for(directory, ROOT)
    done: list[str] = []
    # Already enabled (a rerun): only root may change auth. Not yet: no credentials at all.
    store = EtcdStore(dataclasses.replace(config, username=ROOT, password=root_password))
    try:
        await store.call(lambda c: c.status())
    except etcd_errors.PreconditionFailedError:  # "authentication is not enabled": first run
        await store.close()
        store = EtcdStore(dataclasses.replace(config, username=None, password=None))

    async def run(client: Any) -> None:
        await client.status()  # connects the client, so its channel exists
        admin = AuthAdmin(client)
        for role, role_grants in grants(prefix_keys).items():
            await admin.ensure_role(role)
            for g in role_grants:
                await admin.grant(role, g.key, g.range_end, int(g.perm))
            await admin.ensure_user(role, password_for(directory, role), role)
            done.append(f"user {role}: " + ", ".join(f"{g.perm.name.lower()} {g.key}"
                                                      for g in role_grants))
        await admin.ensure_role(ROOT)
        await admin.ensure_user(ROOT, root_password, ROOT)
        await admin.enable()
        done.append("auth enabled (root's password in the credentials directory)")

    try:
        await store.call(run)
    finally:
        await store.close()
    return done


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    add_etcd_flags(p)
    p.add_flag("--credentials-dir", default="/run/nebula/etcd",
               help="where each user's password file lives (created when missing)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = etcd_config(args)
    except ValueError as exc:
        fail(PROG, str(exc))
    try:
        lines = asyncio.run(apply(config, keys(args), Path(args.credentials_dir)))
    except (StoreUnavailable, etcd_errors.ClientError, grpc.aio.AioRpcError, OSError) as exc:
        detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        fail(PROG, f"could not set up etcd auth: {detail}", code=1)
    for line in lines:
        sys.stdout.write(f"{PROG}: {line}\n")
    if len(ROLES) + 1 != len(lines):
        fail(PROG, "not every role was set up", code=1)
