"""The built-in tools: arithmetic, the date and time in a time zone, search in the project's own
conversations, and unit conversion.

Each is safe to offer to any model: the calculator parses with ``ast`` and walks the tree
itself (never ``eval``), with bounds on everything that could grow; the search reaches only
what the caller could read in the chat; none of them fetches anything from the network.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import operator
import re
import threading
import zoneinfo
from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import Any

import pint
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django_stubs_ext import StrOrPromise

from accounts.models import ApiKey, Project, User
from core.db import db_async

from ..models import Conversation, ConversationQuerySet, Message
from .base import BaseTool, ToolContext, ToolError, ToolResult, ToolSpec


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _number(value: int | float) -> str:
    """Readable: an int as it is, a float to 15 significant digits (0.1 + 0.2 is 0.3)."""
    if isinstance(value, int):
        return str(value)
    return format(value, ".15g")


class BuiltinTool(BaseTool):
    """A tool that ships with the server: its key is its name (``calculator``)."""

    label: StrOrPromise
    summary: StrOrPromise  # one line for the settings that enable it


# --- calculator -------------------------------------------------------------------------------

MAX_EXPRESSION_CHARS = 500
MAX_NODES = 200
# Integers stay exact up to here (a little past the largest float); past it, "too large".
MAX_MAGNITUDE = 10**400
_MAX_POWER_BITS = MAX_MAGNITUDE.bit_length()
MAX_ROUND_DIGITS = 15
MAX_ARGUMENTS = 20

Number = int | float


def _checked(value: Any) -> Number:
    """Every intermediate result: a real, finite number of bounded size."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError(_("The result is not a real number."))
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError(_("The result is too large (overflow)."))
    if isinstance(value, int) and abs(value) > MAX_MAGNITUDE:
        raise ToolError(_("The result is too large (more than 400 digits)."))
    return value


def _power(base: Number, exponent: Number) -> Number:
    # Checked before it is computed: 9 ** 9 ** 9 would take minutes and gigabytes to refuse.
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > _MAX_POWER_BITS:
            raise ToolError(_("The result is too large (more than 400 digits)."))
    elif abs(base) > 1 and exponent > 0 and exponent * math.log2(abs(base)) > 1100:
        raise ToolError(_("The result is too large (overflow)."))
    result = base**exponent
    if isinstance(result, complex):
        raise ToolError(_("The result is not a real number (a negative number to a fraction)."))
    return result


def _round(value: Number, *digits: Number) -> Number:
    """round(x): the nearest whole number; round(x, n): to n decimals."""
    if not digits:
        return round(value)
    if not isinstance(digits[0], int) or abs(digits[0]) > MAX_ROUND_DIGITS:
        raise ToolError(
            _("round() takes a whole number of digits between -%(max)d and %(max)d.")
            % {"max": MAX_ROUND_DIGITS}
        )
    return round(value, digits[0])


def _min(*values: Number) -> Number:
    return min(values)


def _max(*values: Number) -> Number:
    return max(values)


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
# name: (function, fewest arguments, most arguments)
_FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "sqrt": (math.sqrt, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "log": (math.log, 1, 2),
    "log10": (math.log10, 1, 1),
    "exp": (math.exp, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (_min, 1, MAX_ARGUMENTS),
    "max": (_max, 1, MAX_ARGUMENTS),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
# What people (and models) type for the operators Python spells otherwise: the multiplication
# sign, the division sign, the minus sign.
_SPELLINGS = str.maketrans({"\u00d7": "*", "\u00f7": "/", "\u2212": "-"})


def _known_functions() -> str:
    return ", ".join(sorted(_FUNCTIONS))


class _Evaluator:
    """Walks the parsed expression, allowing only numbers, the arithmetic operators, the
    functions and constants above. Any other node (a name, an attribute, a call of anything
    else, a comparison, a subscript, a string...) is refused, naming what it met."""

    def value(self, node: ast.AST) -> Number:
        if isinstance(node, ast.Expression):
            return self.value(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise ToolError(
                    _("Only numbers are allowed, not %(what)s.") % {"what": repr(node.value)[:40]}
                )
            return _checked(node.value)
        if isinstance(node, ast.BinOp):
            binary = _BINARY.get(type(node.op))
            if binary is None:
                if isinstance(node.op, ast.BitXor):
                    raise ToolError(_("“^” is not a power here: write 2 ** 3 for 2³."))
                raise ToolError(_("Only + - * / // % and ** are allowed."))
            left, right = self.value(node.left), self.value(node.right)
            return _checked(binary(left, right))
        if isinstance(node, ast.UnaryOp):
            unary = _UNARY.get(type(node.op))
            if unary is None:
                raise ToolError(_("Only + and - may stand before a number."))
            return _checked(unary(self.value(node.operand)))
        if isinstance(node, ast.Name):
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            if node.id in _FUNCTIONS:
                raise ToolError(
                    _("%(name)s is a function: call it, as in %(name)s(2).") % {"name": node.id}
                )
            raise ToolError(
                _(
                    "Unknown name “%(name)s”: the constants are pi and e; the functions "
                    "%(functions)s."
                )
                % {"name": node.id[:40], "functions": _known_functions()}
            )
        if isinstance(node, ast.Call):
            return self.call(node)
        raise ToolError(
            _(
                "“%(what)s” is not allowed: only numbers, + - * / // %% **, parentheses, pi, e and "
                "the functions %(functions)s."
            )
            % {"what": type(node).__name__, "functions": _known_functions()}
        )

    def call(self, node: ast.Call) -> Number:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name is None or name not in _FUNCTIONS:
            shown = name or type(node.func).__name__
            raise ToolError(
                _("“%(name)s” is not a function the calculator knows: use %(functions)s.")
                % {"name": shown[:40], "functions": _known_functions()}
            )
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise ToolError(_("%(name)s() takes plain arguments only.") % {"name": name})
        function, fewest, most = _FUNCTIONS[name]
        if not fewest <= len(node.args) <= most:
            raise ToolError(
                _("%(name)s() takes %(fewest)d to %(most)d arguments.")
                % {"name": name, "fewest": fewest, "most": most}
            )
        arguments = [self.value(arg) for arg in node.args]
        try:
            return _checked(function(*arguments))
        except ValueError:
            raise ToolError(
                _("%(name)s() is not defined there (a math domain error).") % {"name": name}
            ) from None


def calculate(expression: str) -> Number:
    """The value of ``expression``; ToolError saying what is wrong otherwise."""
    expression = expression.translate(_SPELLINGS).strip()
    if not expression:
        raise ToolError(_("The expression is empty."))
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(
            _("The expression is longer than %(max)d characters.") % {"max": MAX_EXPRESSION_CHARS}
        )
    try:
        # Parsing only: the tree is walked below, never compiled or run.
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ToolError(
            _("This is not an arithmetic expression: %(expression)s") % {"expression": expression}
        ) from None
    if sum(1 for _node in ast.walk(tree)) > MAX_NODES:
        raise ToolError(_("The expression is too long to evaluate; split it into parts."))
    try:
        return _Evaluator().value(tree)
    except ZeroDivisionError:
        raise ToolError(_("Division by zero.")) from None
    except OverflowError:
        raise ToolError(_("The result is too large (overflow).")) from None
    except RecursionError:
        raise ToolError(_("The expression is nested too deeply.")) from None


class Calculator(BuiltinTool):
    label = gettext_lazy("Calculator")
    summary = gettext_lazy("Arithmetic: + - * /, powers, square roots, logarithms, sin…")
    spec = ToolSpec(
        name="calculator",
        description=(
            "Evaluate an arithmetic expression (computed, not guessed). Allowed: numbers, "
            "+ - * / // % ** (power), parentheses, the constants pi and e, and the functions "
            "sqrt, sin, cos, tan (radians), log (natural, or log(x, base)), log10, exp, abs, "
            "round(x, digits), min, max, floor, ceil. Example: (2 + 3) ** 2 / sqrt(16)."
        ),
        parameters={
            "type": "object",
            "properties": {
                "expression": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_EXPRESSION_CHARS,
                    "description": "The expression, e.g. 1234 * 5.6 or round(100 / 7, 3).",
                }
            },
            "required": ["expression"],
            "additionalProperties": False,
        },
    )

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        expression = arguments["expression"]
        return ToolResult(f"{expression.strip()} = {_number(calculate(expression))}")


# --- date and time ----------------------------------------------------------------------------

# Not strftime("%A"): that follows the process's C locale.
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _offset(moment: datetime) -> str:
    offset = moment.utcoffset()
    seconds = int(offset.total_seconds()) if offset is not None else 0
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    return f"{sign}{hours:02d}:{rest // 60:02d}"


def time_zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name.strip())
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: a key that is no path inside the database ("../etc/passwd", "/x").
        raise ToolError(
            _("Unknown time zone “%(name)s”: use an IANA name such as Asia/Seoul or UTC.")
            % {"name": name[:64]}
        ) from None


class CurrentDatetime(BuiltinTool):
    label = gettext_lazy("Date and time")
    summary = gettext_lazy("Today's date, the time and the weekday in any time zone.")
    spec = ToolSpec(
        name="current_datetime",
        description=(
            "The current date, time, weekday and UTC offset in a time zone. Use it whenever "
            "the answer depends on today's date or the time."
        ),
        parameters={
            "type": "object",
            "properties": {
                "time_zone": {
                    "type": "string",
                    "maxLength": 64,
                    "default": "UTC",
                    "description": "An IANA time zone, e.g. Asia/Seoul, Europe/Paris, UTC.",
                }
            },
            "additionalProperties": False,
        },
    )

    def __init__(self, now: Callable[[], datetime] = timezone.now) -> None:
        self.now = now  # tests pass a fixed clock

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        name = arguments.get("time_zone") or "UTC"
        moment = self.now().astimezone(time_zone(name))
        return ToolResult(
            _json(
                {
                    "time_zone": name.strip(),
                    "date": moment.date().isoformat(),
                    "time": moment.strftime("%H:%M:%S"),
                    "weekday": WEEKDAYS[moment.weekday()],
                    "utc_offset": _offset(moment),
                    "abbreviation": moment.tzname(),
                    "iso": moment.isoformat(timespec="seconds"),
                }
            )
        )


# --- search in the project's conversations ----------------------------------------------------

MAX_QUERY_WORDS = 8
SNIPPET_BEFORE, SNIPPET_AFTER = 60, 140


def readable_conversations(context: ToolContext) -> ConversationQuerySet:
    """What the caller could open in the chat, in the context's project: a person's own
    conversations and rooms, or a key's project's API conversations. Nobody: nothing."""
    if context.user_id is not None:
        user = User.objects.filter(pk=context.user_id, is_active=True).first()
        if user is None:
            return Conversation.objects.none()
        return Conversation.objects.for_user(user).filter(project_id=context.project_id)
    if context.api_key_id is not None:
        project = Project.objects.filter(pk=context.project_id).first()
        if project is None:
            return Conversation.objects.none()
        key = ApiKey.objects.for_project(project).usable().filter(pk=context.api_key_id).first()
        if key is None:
            return Conversation.objects.none()
        return Conversation.objects.for_api_key(key)
    return Conversation.objects.none()


def _snippet(content: str, words: list[str]) -> str:
    text = " ".join(content.split())
    match = re.search(re.escape(words[0]), text, re.IGNORECASE)
    at = match.start() if match else 0
    start, end = max(0, at - SNIPPET_BEFORE), min(len(text), at + SNIPPET_AFTER)
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


def search_messages(*, context: ToolContext, query: str, limit: int) -> list[dict[str, Any]]:
    """Messages on the current branch of the conversations the caller may read that contain
    every word of ``query`` (case-insensitive), newest first. Flagged input and replies still
    being written are left out."""
    words = query.split()[:MAX_QUERY_WORDS]
    if not words:
        return []
    messages = (
        Message.objects.filter(
            conversation__in=readable_conversations(context),
            on_path=True,
            flagged=False,
            role__in=(Message.Role.USER, Message.Role.ASSISTANT),
        )
        .exclude(state=Message.State.STREAMING)
        .select_related("conversation")
    )
    for word in words:
        messages = messages.filter(content__icontains=word)
    return [
        {
            "conversation_id": message.conversation_id,
            "title": message.conversation.display_title,
            "current": message.conversation_id == context.conversation_id,
            "role": message.role,
            "snippet": _snippet(message.content, words),
            "date": message.created_at.isoformat(timespec="seconds"),
        }
        for message in messages.order_by("-id")[:limit]
    ]


class SearchConversations(BuiltinTool):
    label = gettext_lazy("Search conversations")
    summary = gettext_lazy("Finds messages in this project's conversations you can read.")
    spec = ToolSpec(
        name="search_conversations",
        description=(
            "Search the messages of this project's earlier conversations that the user may "
            "read. Every word of the query must appear in a message. Returns the conversation, "
            "its title, who wrote the message, a snippet and the date; 'current' marks the "
            "conversation this call is made from."
        ),
        parameters={
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 200,
                    "description": "Words to look for, e.g. 'Jeju budget'.",
                },
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 10,
                    "default": 5,
                    "description": "At most this many messages (1 to 10).",
                },
            },
            "required": ["query"],
            "additionalProperties": False,
        },
    )

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        query = arguments["query"].strip()
        if not query:
            raise ToolError(_("The query is empty: give at least one word to look for."))
        limit = arguments.get("limit", 5)
        results = await db_async(search_messages)(context=context, query=query, limit=limit)
        return ToolResult(_json({"query": query, "count": len(results), "results": results}))


# --- unit conversion --------------------------------------------------------------------------

MAX_UNIT_CHARS = 64
MAX_UNIT_EXPONENT = 12
_EXPONENT = re.compile(r"(?:\*\*|\^)\s*\(?\s*[-+]?\s*(\d+(?:\.\d*)?|\.\d+)")
_units_lock = threading.Lock()


@cache
def unit_registry() -> pint.UnitRegistry:
    """The one registry of the process (building it reads Pint's definitions: ~0.3 s)."""
    return pint.UnitRegistry(cache_folder=None)


def _unit(registry: pint.UnitRegistry, text: str) -> pint.Unit:
    text = text.strip()
    if not text or len(text) > MAX_UNIT_CHARS:
        raise ToolError(
            _("A unit is 1 to %(max)d characters, such as km, degF or kWh.")
            % {"max": MAX_UNIT_CHARS}
        )
    # Bounded before Pint sees it: m ** 99999999 would make a number nobody can print.
    if any(float(power) > MAX_UNIT_EXPONENT for power in _EXPONENT.findall(text)):
        raise ToolError(_("Unit exponents go up to %(max)d.") % {"max": MAX_UNIT_EXPONENT})
    try:
        return registry.parse_units(text)
    except pint.UndefinedUnitError:
        raise ToolError(_("Unknown unit “%(unit)s”.") % {"unit": text}) from None
    except Exception:  # Pint's parser refuses garbage with many exception types
        raise ToolError(
            _("“%(unit)s” is not a unit (write e.g. km/h, degC, kWh, lb).") % {"unit": text}
        ) from None


def convert(value: float, source: str, target: str) -> tuple[float, str, str]:
    """``value`` in ``source`` as ``target``: (number, source unit, target unit) by Pint's
    names. Offset units (°C, °F) convert as temperatures, not as differences."""
    with _units_lock:  # Pint's registry fills caches as it parses: one thread at a time
        registry = unit_registry()
        source_unit, target_unit = _unit(registry, source), _unit(registry, target)
        try:
            quantity = registry.Quantity(value, source_unit).to(target_unit)
        except pint.DimensionalityError:
            raise ToolError(
                _(
                    "“%(source)s” (%(source_kind)s) cannot be converted to “%(target)s” "
                    "(%(target_kind)s)."
                )
                % {
                    "source": source.strip(),
                    "source_kind": registry.get_dimensionality(source_unit),
                    "target": target.strip(),
                    "target_kind": registry.get_dimensionality(target_unit),
                }
            ) from None
        except pint.OffsetUnitCalculusError:
            raise ToolError(
                _("Temperatures in °C or °F convert only on their own, not inside other units.")
            ) from None
        except OverflowError:
            raise ToolError(_("The result is too large (overflow).")) from None
        magnitude = float(quantity.magnitude)
        if not math.isfinite(magnitude):
            raise ToolError(_("The result is too large (overflow)."))
        return magnitude, str(source_unit), str(target_unit)


class ConvertUnits(BuiltinTool):
    label = gettext_lazy("Unit conversion")
    summary = gettext_lazy("Converts lengths, weights, temperatures, speeds, energy and more.")
    spec = ToolSpec(
        name="convert_units",
        description=(
            "Convert a quantity between units of the same kind: length, mass, time, speed, "
            "volume, energy, pressure, data, temperature (degC, degF, K) and more. Units as "
            "written in physics: km, mi, lb, kg, degC, degF, kWh, km/h, ft**2."
        ),
        parameters={
            "type": "object",
            "properties": {
                "value": {"type": "number", "description": "The amount, e.g. 100."},
                "from": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_UNIT_CHARS,
                    "description": "The unit it is in, e.g. degC or mile.",
                },
                "to": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_UNIT_CHARS,
                    "description": "The unit wanted, e.g. degF or km.",
                },
            },
            "required": ["value", "from", "to"],
            "additionalProperties": False,
        },
    )

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        value = arguments["value"]
        # In a thread: the first call builds the registry, which would hold up the event loop.
        result, source, target = await asyncio.to_thread(
            convert, float(value), arguments["from"], arguments["to"]
        )
        shown = format(result, ".12g")  # 211.99999999999991 °F is 212 °F
        return ToolResult(
            _json(
                {
                    "value": value,
                    "from": source,
                    "to": target,
                    "result": float(shown),
                    "text": f"{_number(value)} {source} = {shown} {target}",
                }
            )
        )


# In the order the settings list them.
BUILTIN_TOOLS: dict[str, BuiltinTool] = {
    tool.spec.name: tool
    for tool in (Calculator(), CurrentDatetime(), SearchConversations(), ConvertUnits())
}
