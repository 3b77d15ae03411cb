"""The vocabulary of the request contract: small typed specs of JSON values.

One description, two uses: ``check(value)`` is the gateway's validation (run on
every request: it walks the spec directly and returns None or the first
:class:`Problem`), ``schema()`` is the same spec as JSON Schema (published at
``/openapi.json``). Every spec and its schema accept exactly the same values;
``tests/unit/gateway/test_contract.py`` holds them to it with generated requests.

Conventions that hold everywhere: an optional field that is null counts as
absent; a required field that is absent or null is refused as its spec refuses a
null (``tools[0].function must be an object``), but at the top of a request it is
``missing_required_parameter`` (``you must provide a model parameter``); extra
fields are allowed (they are forwarded to the engine untouched).

Speed: each spec builds its ``check`` once, as a closure over its settings. A
scalar's check accepts the common valid value in one comparison and leaves
everything else to its ``refusal`` (the full rule, which also words the problem);
containers look a member's type up in the member spec's ``fast`` table and skip
the call (or the layers of a :class:`OneOf`) where it can. Nothing is allocated
for an accepted request.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

MISSING = "missing_required_parameter"
INVALID = "invalid_request"
Schema = dict[str, Any]
Check = Callable[[Any], "Problem | None"]
Fast = Mapping[type, Check | None]
Members = tuple[tuple[str, Fast, Check], ...]

# Keywords that constrain one JSON type only: null passes them, so a nullable field can
# say ``"type": [t, "null"]`` instead of wrapping its schema in ``anyOf``.
_TYPE_SCOPED = frozenset({"type", "title", "description", "minimum", "maximum", "minLength",
                          "maxLength", "items", "minItems", "maxItems", "properties",
                          "required"})


class Problem:
    """Why a value was refused: the text after its param, the error code, and where.

    ``path`` grows innermost first as the problem is handed up (``at``), so the
    param string is built only for a refused request. ``absent``: a required member
    was not given (worded as OpenAI does when that member is a request's own).
    """

    __slots__ = ("absent", "path", "text", "type_code")

    def __init__(self, text: str, code: str = INVALID) -> None:
        self.text = text
        self.type_code = code
        self.absent = False
        self.path: list[str | int] = []

    def at(self, step: str | int) -> Problem:
        self.path.append(step)
        return self

    @property
    def param(self) -> str:
        out = ""
        for step in reversed(self.path):
            if isinstance(step, int):
                out += f"[{step}]"
            else:
                out += f".{step}" if out else step
        return out

    @property
    def top_absent(self) -> bool:
        return self.absent and len(self.path) == 1

    @property
    def code(self) -> str:
        return MISSING if self.top_absent else self.type_code

    @property
    def message(self) -> str:
        if self.top_absent:
            name = str(self.path[0])
            return f"you must provide {'an' if name[0] in 'aeiou' else 'a'} {name} parameter"
        return self.param + self.text


class Spec:
    """A JSON value's contract: ``check`` for validation, ``schema`` for OpenAPI."""

    types: tuple[type, ...] = ()
    """The Python types of decoded JSON this spec may accept (how :class:`OneOf` picks)."""
    fast: Fast = {}
    """By the value's Python type, the check it needs: None when this spec accepts every
    value of that type; a type not listed needs :attr:`check`."""
    noun = "a value"
    """What a value of this spec is, in a message ("must be a string or an array")."""
    check: Check
    """None when the value is accepted, else the first problem (set by ``__init__``)."""

    def inline(self) -> tuple[Fast, Check, str | None]:
        """What a container calls for a member of this spec: the fast table, the check,
        and the text that replaces any problem's (see :class:`Opaque`) or None."""
        return self.fast, self.check, None

    def schema(self) -> Schema:
        raise NotImplementedError


class Str(Spec):
    types = (str,)
    noun = "a string"

    def __init__(self, min_length: int = 0, max_length: int | None = None) -> None:
        self.min_length = min_length
        self.max_length = max_length
        if not min_length and max_length is None:
            self.fast = {str: None}
        low, high, refusal = min_length, sys.maxsize if max_length is None else max_length, \
            self.refusal

        def check(value: Any) -> Problem | None:
            if type(value) is str and low <= len(value) <= high:
                return None
            return refusal(value)
        self.check = check

    def refusal(self, value: Any) -> Problem | None:
        if not isinstance(value, str):
            return Problem(" must be a string")
        if len(value) < self.min_length:
            return Problem(" must not be empty" if self.min_length == 1
                           else f" must be at least {self.min_length} characters")
        if self.max_length is not None and len(value) > self.max_length:
            return Problem(f" is longer than {self.max_length} characters")
        return None

    def schema(self) -> Schema:
        out: Schema = {"type": "string"}
        if self.min_length:
            out["minLength"] = self.min_length
        if self.max_length is not None:
            out["maxLength"] = self.max_length
        return out


class Bool(Spec):
    types = (bool,)
    fast = {bool: None}
    noun = "a boolean"

    def __init__(self) -> None:
        self.check = self.refusal

    @staticmethod
    def refusal(value: Any) -> Problem | None:
        return None if value is True or value is False else Problem(" must be a boolean")

    def schema(self) -> Schema:
        return {"type": "boolean"}


class _Bounded(Spec):
    """Numbers with optional inclusive bounds (JSON Schema's minimum and maximum)."""

    types = (int, float)
    json_type: ClassVar[str] = ""

    def __init__(self, minimum: float | None = None, maximum: float | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.check = self.fast_check(-math.inf if minimum is None else minimum,
                                     math.inf if maximum is None else maximum)

    def fast_check(self, low: float, high: float) -> Check:
        raise NotImplementedError

    def out_of_range(self, value: float) -> Problem | None:
        low, high = self.minimum, self.maximum
        if (low is None or value >= low) and (high is None or value <= high):
            return None
        if high is None:
            return Problem(f" must be at least {self.bound(low)}, got {value}")
        if low is None:
            return Problem(f" must be at most {self.bound(high)}, got {value}")
        return Problem(f" must be between {self.bound(low)} and {self.bound(high)}, "
                       f"got {value}")

    def bound(self, value: float | None) -> str:
        return str(value)

    def schema(self) -> Schema:
        out: Schema = {"type": self.json_type}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out


class Int(_Bounded):
    """JSON Schema's integer: ``3`` and ``3.0`` alike (JSON does not tell them apart)."""

    noun = "an integer"
    json_type = "integer"

    def fast_check(self, low: float, high: float) -> Check:
        refusal = self.refusal

        def check(value: Any) -> Problem | None:
            if type(value) is int and low <= value <= high:
                return None
            return refusal(value)
        return check

    def refusal(self, value: Any) -> Problem | None:
        kind = type(value)
        if kind is not int and not (kind is float and value.is_integer()):
            return Problem(" must be an integer")
        return self.out_of_range(value)


class Num(_Bounded):
    noun = "a number"
    json_type = "number"

    def fast_check(self, low: float, high: float) -> Check:
        if math.isinf(low) or math.isinf(high):
            return self.refusal  # an infinite bound would let an infinite value through
        refusal = self.refusal

        def check(value: Any) -> Problem | None:
            kind = type(value)
            if (kind is float or kind is int) and low <= value <= high:
                return None
            return refusal(value)
        return check

    def refusal(self, value: Any) -> Problem | None:
        kind = type(value)
        # (an int is always finite; math.isfinite would overflow on a 400-digit one)
        if kind is not int and not (kind is float and math.isfinite(value)):
            return Problem(" must be a number")
        return self.out_of_range(value)

    def bound(self, value: float | None) -> str:
        return format(value, "g")


class Enum(Spec):
    types = (str,)

    def __init__(self, *values: str) -> None:
        self.values = values
        self.noun = _either(f"'{v}'" for v in values)
        known, text = frozenset(values), f" must be {self.noun}"

        def check(value: Any) -> Problem | None:
            if type(value) is str and value in known:
                return None
            return Problem(text)
        self.check = check

    def schema(self) -> Schema:
        return {"enum": list(self.values)}


class Arr(Spec):
    """An array; ``items`` None leaves the elements unchecked."""

    types = (list,)
    noun = "an array"

    def __init__(self, items: Spec | None = None, *, min_items: int = 0,
                 max_items: int | None = None, item_noun: str = "item") -> None:
        self.items = items
        self.min_items = min_items
        self.max_items = max_items
        self.item_noun = item_noun
        low, high, refusal = min_items, sys.maxsize if max_items is None else max_items, \
            self.refusal
        if items is None:
            if not min_items and max_items is None:
                self.fast = {list: None}

            def check(value: Any) -> Problem | None:
                if type(value) is list and low <= len(value) <= high:
                    return None
                return refusal(value)
            self.check = check
            return
        fast, item_check, text = items.inline()

        def check_items(value: Any) -> Problem | None:
            if type(value) is not list or not low <= len(value) <= high:
                return refusal(value)
            for item in value:  # (no enumerate: the index is looked up for a refusal only)
                run = fast.get(type(item), item_check)
                if run is not None:
                    problem = run(item)
                    if problem is not None:
                        return _worded(problem, text).at(_index(value, item))
            return None

        def check_each(value: Any) -> Problem | None:  # (items with no fast table)
            if type(value) is not list or not low <= len(value) <= high:
                return refusal(value)
            for item in value:
                problem = item_check(item)
                if problem is not None:
                    return _worded(problem, text).at(_index(value, item))
            return None
        self.check = check_items if fast else check_each

    def refusal(self, value: Any) -> Problem | None:
        """The problem of a value that is not a list or has the wrong length."""
        if not isinstance(value, list):
            return Problem(" must be an array")
        if len(value) < self.min_items:
            if self.min_items == 1:
                return Problem(f" must contain at least one {self.item_noun}")
            return Problem(f" must contain at least {self.min_items} {self.item_noun}s")
        return Problem(f" must contain at most {self.max_items} {self.item_noun}s")

    def schema(self) -> Schema:
        out: Schema = {"type": "array"}
        if self.items is not None:
            out["items"] = self.items.schema()
        if self.min_items:
            out["minItems"] = self.min_items
        if self.max_items is not None:
            out["maxItems"] = self.max_items
        return out


class Field:
    """One named member of an object.

    ``nullable`` defaults to "optional fields accept null (as absent), required ones
    do not". ``unless`` names a sibling array whose being non-empty excuses a required
    field's absence (an assistant message needs content unless it has tool calls).
    ``absent``: the text for a required member not given, code
    ``missing_required_parameter`` (default: refused as its spec refuses a null).
    """

    __slots__ = ("absent", "doc", "name", "null_ok", "required", "spec", "unless")

    def __init__(self, name: str, spec: Spec, *, required: bool = False,
                 nullable: bool | None = None, unless: str | None = None,
                 absent: str | None = None, doc: str = "") -> None:
        self.name = name
        self.spec = spec
        self.required = required
        self.null_ok = (not required) if nullable is None else nullable
        self.unless = unless
        self.absent = absent
        self.doc = doc

    def schema(self) -> Schema:
        out = self.spec.schema()
        if self.null_ok or self.unless is not None:  # excused, it may be null (Obj.schema)
            out = or_null(out)
        if self.doc:
            out = {**out, "description": self.doc}
        return out


def or_null(schema: Schema) -> Schema:
    """``schema`` that also accepts null."""
    kind = schema.get("type")
    if isinstance(kind, str) and _TYPE_SCOPED.issuperset(schema):
        return {**schema, "type": [kind, "null"]}
    if set(schema) == {"enum"}:
        return {"enum": [*schema["enum"], None]}
    return {"anyOf": [schema, {"type": "null"}]}


class Obj(Spec):
    """An object with named fields; fields it does not name are allowed, unchecked."""

    types = (dict,)
    noun = "an object"

    def __init__(self, *fields: Field, title: str | None = None) -> None:
        self.fields = fields
        self.title = title
        self.required = tuple(f for f in fields if f.required)
        if not fields:
            self.fast = {dict: None}
        self.check = self.walker()

    def walker(self, tag_keys: int = 0) -> Check:
        """The object's check. ``tag_keys``: members that a :class:`Tagged` around
        this object has checked itself (its tag)."""
        required = tuple((f.name, *f.spec.inline()) for f in self.required)
        optional = {f.name: (*f.spec.inline(), f.null_ok) for f in self.fields if not f.required}
        size, accounted = len(optional), len(required) + tag_keys
        by_name, excused = {f.name: f for f in self.required}, self.excused

        def check(value: Any) -> Problem | None:
            if type(value) is not dict:
                return Problem(" must be an object")
            complete = True
            for name, fast, member, text in required:
                item = value.get(name)
                if item is None:
                    problem = excused(value, by_name[name])
                    if problem is not None:
                        return problem
                    complete = False
                    continue
                run = fast.get(type(item), member)
                if run is not None:
                    problem = run(item)
                    if problem is not None:
                        return _worded(problem, text).at(name)
            if not size or (complete and len(value) == accounted):
                return None  # no option to check, or no member but the required ones
            # the object's members, not the options: a request names a few of many
            for name, item in value.items():
                known = optional.get(name)
                if known is None or (item is None and known[3]):
                    continue
                run = known[0].get(type(item), known[1])
                if run is not None and run(item) is not None:
                    return first_option_problem(value)
            return None

        def first_option_problem(value: dict[str, Any]) -> Problem | None:
            """Of several bad options, the first in the spec's order (not the body's)."""
            for name, (_, member, text, null_ok) in optional.items():
                item = value.get(name)
                if item is None and (null_ok or name not in value):
                    continue
                problem = member(item)
                if problem is not None:
                    return _worded(problem, text).at(name)
            return None
        return check

    def required_members(self, tag_keys: int = 0) -> tuple[Members, int] | None:
        """For a :class:`Tagged` to walk this object inline: the required members
        (name, fast table, check) and the member count that leaves no option to
        check (-1: any count, there is no option). None when a required member may be
        excused (its absence needs :meth:`excused`)."""
        if any(f.null_ok or f.unless is not None for f in self.required):
            return None
        options = any(not f.required for f in self.fields)
        return (tuple((f.name, *f.spec.inline()[:2]) for f in self.required),
                len(self.required) + tag_keys if options else -1)

    @staticmethod
    def excused(value: dict[str, Any], field: Field) -> Problem | None:
        """A required member absent or null: None when its field allows that here."""
        if (field.null_ok and field.name in value) or (
                field.unless is not None and value.get(field.unless)):
            return None
        if field.absent is not None:
            return Problem(field.absent, MISSING).at(field.name)
        problem = field.spec.check(None) or Problem(" is required", MISSING)
        problem.absent = True
        return problem.at(field.name)

    def schema(self) -> Schema:
        out: Schema = {"type": "object"}
        if self.title:
            out["title"] = self.title
        out["properties"] = {f.name: f.schema() for f in self.fields}
        required = [f.name for f in self.required if f.unless is None]
        if required:
            out["required"] = required
        excused = [{"anyOf": [_present(f),
                              {"required": [f.unless],
                               "properties": {f.unless: {"type": "array", "minItems": 1}}}]}
                   for f in self.required if f.unless is not None]
        if len(excused) == 1:
            out.update(excused[0])
        elif excused:
            out["allOf"] = excused
        return out


def _present(field: Field) -> Schema:
    """A required field there (and, unless it is nullable, not null): the branch of its
    ``unless`` rule that needs no excuse."""
    if field.null_ok:
        return {"required": [field.name]}
    return {"required": [field.name], "properties": {field.name: {"not": {"type": "null"}}}}


class Tagged(Spec):
    """An object whose ``tag`` field picks its variant: a chat message by role, a format
    or an input item by type.

    ``at_tag``: a bad or missing tag is reported at ``<param>.<tag>`` (else at the
    object itself, with ``bad`` for every refusal of the object or its tag). ``bad``
    may name ``{value}`` (the tag given) and ``{values}`` (the known ones). ``default``
    is the variant of an object without the tag; ``other`` takes any other string tag.
    """

    types = (dict,)
    noun = "an object"

    def __init__(self, tag: str, variants: Mapping[str, Obj], *, bad: str,
                 at_tag: bool = True, default: str | None = None, other: Obj | None = None,
                 title: str | None = None) -> None:
        self.tag = tag
        self.variants = dict(variants)
        self.bad = bad
        self.at_tag = at_tag
        self.default = default
        self.other = other
        self.title = title
        walkers: dict[str | None, Check] = {
            name: obj.walker(tag_keys=1) for name, obj in self.variants.items()}
        other_walker = other.walker(tag_keys=1) if other is not None else None
        refusal = self.refusal
        # The common case is walked here, one call less than the variant's walker: the
        # required members and no option (a chat message with its content, a content
        # part). Anything else, and every refusal, is left to the walker.
        plain: dict[str | None, tuple[Members, int] | None] = {
            name: obj.required_members(tag_keys=1) for name, obj in self.variants.items()}
        other_plain = other.required_members(tag_keys=1) if other is not None else None
        if default is not None:
            plain[None] = self.variants[default].required_members()  # (the untagged)
            walkers[None] = self.variants[default].walker()

        def check(value: Any) -> Problem | None:
            if type(value) is dict:
                kind = value.get(tag)
                if type(kind) is not str:
                    if kind is not None or default is None or tag in value:
                        return refusal(value)
                shape = plain.get(kind, other_plain)
                if shape is not None and (shape[1] < 0 or len(value) == shape[1]):
                    for name, fast, member in shape[0]:
                        item = value.get(name)
                        run = fast.get(type(item), member)
                        if item is None or (run is not None and run(item) is not None):
                            break
                    else:
                        return None
                walker = walkers.get(kind, other_walker)
                if walker is not None:
                    return walker(value)
            return refusal(value)
        self.check = check

    def refusal(self, value: Any) -> Problem:
        """The problem of a value that is no object, or has no tag this spec knows."""
        if not isinstance(value, dict):
            return Problem(" must be an object") if self.at_tag else self._bad(None)
        kind = value.get(self.tag, self.default)
        if kind is None and self.default is None and self.at_tag:
            return Problem(" is required", MISSING).at(self.tag)
        return self._bad(kind)

    def _bad(self, kind: Any) -> Problem:
        problem = Problem(self.bad.format(value=kind, values=", ".join(self.variants)))
        return problem.at(self.tag) if self.at_tag else problem

    def schema(self) -> Schema:
        alternatives = [self._variant(variant, {"const": name}, required=name != self.default)
                        for name, variant in self.variants.items()]
        if self.other is not None:
            others: Schema = {"type": "string"}
            if self.variants:
                others["not"] = {"enum": list(self.variants)}
            alternatives.append(self._variant(self.other, others, required=True))
        out: Schema = {"type": "object"}
        if self.title:
            out["title"] = self.title
        out["anyOf"] = alternatives
        return out

    def _variant(self, variant: Obj, tag: Schema, *, required: bool) -> Schema:
        out = variant.schema()
        out["properties"] = {self.tag: tag, **out["properties"]}
        if required:
            out["required"] = [self.tag, *out.get("required", [])]
        return out


class OneOf(Spec):
    """The first variant (of those for the value's JSON type) that accepts the value.

    A value of a type no variant takes gets ``message``; otherwise the first
    variant's own problem is reported (wrap in :class:`Opaque` for one message).
    """

    def __init__(self, *variants: Spec, message: str | None = None) -> None:
        self.variants = variants
        grouped: dict[type, list[Spec]] = {}
        for variant in variants:
            for kind in variant.types:
                grouped.setdefault(kind, []).append(variant)
        self.types = tuple(grouped)
        self.message = message or " must be " + _either(v.noun for v in variants)
        # By type: None when some variant accepts every value of it; the variant's own
        # fast entry or check when it is the only one for that type. Containers use the
        # table too, skipping this dispatch.
        table: dict[type, Check | None] = {}
        for kind, specs in grouped.items():
            if any(kind in v.fast and v.fast[kind] is None for v in specs):
                table[kind] = None
            elif len(specs) == 1:
                table[kind] = specs[0].fast.get(kind, specs[0].check)
        self.fast = table
        several = {kind: tuple(v.check for v in specs) for kind, specs in grouped.items()
                   if kind not in table}
        text = self.message

        def check(value: Any) -> Problem | None:
            kind = type(value)
            if kind in table:
                run = table[kind]
                return None if run is None else run(value)
            checks = several.get(kind)
            if checks is None:
                return Problem(text)
            first: Problem | None = None
            for variant_check in checks:
                problem = variant_check(value)
                if problem is None:
                    return None
                first = first or problem
            return first
        self.check = check

    def schema(self) -> Schema:
        return {"anyOf": [v.schema() for v in self.variants]}


class Opaque(Spec):
    """``spec``, but any refusal inside it is one ``message`` about the value itself."""

    def __init__(self, spec: Spec, message: str) -> None:
        self.spec = spec
        self.message = message
        self.types = spec.types
        # only "accepted whole" carries over: a check inside would bypass the one message
        self.fast = {kind: None for kind, run in spec.fast.items() if run is None}
        inner = spec.check

        def check(value: Any) -> Problem | None:
            return None if inner(value) is None else Problem(message)
        self.check = check

    def inline(self) -> tuple[Fast, Check, str | None]:
        # the container calls the inner spec itself and words its problem: a call less
        fast, check, _ = self.spec.inline()
        return fast, check, self.message

    def schema(self) -> Schema:
        return self.spec.schema()


def _worded(problem: Problem, text: str | None) -> Problem:
    """The problem, or one with ``text`` instead when the member is :class:`Opaque`."""
    return problem if text is None else Problem(text)


def _index(items: list[Any], item: Any) -> int:
    """Where ``item`` (this very object) is; an equal one earlier would have failed first."""
    return next(i for i, x in enumerate(items) if x is item)


def _either(nouns: Iterable[str]) -> str:
    names = list(dict.fromkeys(nouns))
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
