"""Which engine arguments a node accepts from a placement plan (pure).

A plan's ``engine_args`` and model name come from etcd and become an engine's
command line on this host, so a node runs only flags it knows to be harmless:
each engine has an allow-list, and the flag that makes an engine run code from
the model's repository (vLLM's ``--trust-remote-code``) needs the model spec to
say so (``trust_remote_code``). A refused replica is reported ``failed`` with
the reason; it is not started.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ArgPolicy:
    """The engine flags a node passes on; anything else is refused."""

    engine: str
    allowed: frozenset[str]
    dashes_for_underscores: bool = False
    """vLLM's parser reads ``--max_model_len`` as ``--max-model-len``: compare that way."""
    trust_remote_code: str = ""
    """The flag that runs the model repository's code ("" when the engine has none)."""

    def flag_name(self, arg: str) -> str:
        name = arg.partition("=")[0]
        if self.dashes_for_underscores and name.startswith("--"):
            name = "--" + name[2:].replace("_", "-")
        return name


def _is_number(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return False
    return True


def refusal(policy: ArgPolicy, model_uid: str, model_name: str, args: Iterable[str],
            trust_remote_code: bool) -> str | None:
    """Why the node must not start this replica, or None when it may.

    Every word that looks like a flag (a leading ``-``, not a negative number such
    as ``--n_gpu_layers -1``) must be allowed; the words between flags are their values.
    """
    for what, value in (("model uid", model_uid), ("model name", model_name)):
        if value.startswith("-"):
            return f"{what} {value!r} starts with '-': an engine would read it as a flag"
    for arg in args:
        if not arg.startswith("-") or _is_number(arg):
            continue
        name = policy.flag_name(arg)
        if policy.trust_remote_code and name == policy.trust_remote_code:
            if not trust_remote_code:
                return (f"engine argument {name} needs trust_remote_code in the model spec "
                        "(nebula deploy --trust-remote-code)")
            continue
        if name not in policy.allowed:
            return (f"engine argument {name} is not allowed for engine {policy.engine} "
                    "(see docs/security.md)")
    return None


def arg_value(args: Iterable[str], flag: str) -> str | None:
    """The value the last ``flag X`` or ``flag=X`` in ``args`` gives (None when absent).

    Underscores and dashes are the same to the engines that take both (vLLM, llama.cpp's
    server reads underscores only but never sees dashes from a plan it accepted).
    """
    words = list(args)
    want = flag.replace("_", "-")
    found: str | None = None
    for i, word in enumerate(words):
        name, eq, value = word.partition("=")
        if name.replace("_", "-") != want:
            continue
        if eq:
            found = value
        elif i + 1 < len(words):
            found = words[i + 1]
    return found


def arg_count(args: Iterable[str], flag: str) -> int | None:
    """``flag``'s value as a non-negative integer; None when absent or not one (the
    engine itself refuses a bad value at start)."""
    value = arg_value(args, flag)
    try:
        count = int(value) if value is not None else -1
    except ValueError:
        return None
    return count if count >= 0 else None
