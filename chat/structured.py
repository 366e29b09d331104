"""Structured output: the JSON a conversation or persona asks for, and whether a reply is it.

A conversation (or persona) asks for JSON with ``json_mode`` (any JSON object: OpenAI's
``response_format`` ``json_object``) or with ``json_schema`` (OpenAI's ``json_schema`` object,
``{"name", "schema", "strict", "description"}``), which wins when both are set. The schema is
checked when it is saved (``check_json_schema``): valid JSON Schema describing an object,
referring only to its own parts, so nothing reaches a model that no reply could satisfy and
nothing makes the server fetch a URL. Each finished reply is then checked against what was
asked (``check_reply``); the page shows a valid one as formatted JSON and marks an invalid one,
keeping its raw text.

``check_reply``'s reasons are stored with the reply in English (JSON's and jsonschema's own
words follow the prefix); ``reason_text`` says the prefix in the reader's language.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, NoReturn

import referencing
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django_stubs_ext import StrOrPromise
from jsonschema.exceptions import SchemaError, best_match  # type: ignore[import-untyped]
from jsonschema.protocols import Validator  # type: ignore[import-untyped]
from jsonschema.validators import (  # type: ignore[import-untyped]
    Draft202012Validator,
    validator_for,
)

from core.errors import ServiceError

logger = logging.getLogger(__name__)

_NO_RETRIEVAL: referencing.Registry[Any] = referencing.Registry()

# OpenAI's rule for a response format's name.
NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
KEYS = ("name", "schema", "strict", "description")
# A schema is sent with every reply and checked against each: a generous bound, not a quota.
MAX_SCHEMA_CHARS = 100_000
MAX_REASON_CHARS = 300  # Message.json_error's length

# The prefixes of check_reply's reasons (stored in English, said in the reader's language).
NOT_JSON = "Not valid JSON"
NOT_AN_OBJECT = "Not a JSON object"
NO_MATCH = "Does not match the schema"
UNCHECKED = "Could not be checked against the schema"
_PREFIXES: dict[str, StrOrPromise] = {
    NOT_JSON: gettext_lazy("Not valid JSON"),
    NOT_AN_OBJECT: gettext_lazy("Not a JSON object"),
    NO_MATCH: gettext_lazy("Does not match the schema"),
    UNCHECKED: gettext_lazy("Could not be checked against the schema"),
}

EXAMPLE = (
    '{"name": "city", "strict": true, "schema": {"type": "object", "properties": '
    '{"name": {"type": "string"}, "population": {"type": "integer"}}, '
    '"required": ["name", "population"], "additionalProperties": false}}'
)


def _refuse(message: str) -> NoReturn:
    raise ServiceError(message, code="invalid_json_schema", param="json_schema")


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")


def _where(error: json.JSONDecodeError) -> str:
    return f"{error.msg} at line {error.lineno} column {error.colno}"


def _parse(text: str) -> Any:
    """JSON text as Python values; NaN and Infinity (Python's extensions) are refused."""
    return json.loads(text, parse_constant=_not_json)


def schema_problem(schema: object) -> str | None:
    """What makes ``schema`` unusable as the JSON Schema of a reply, naming where it is
    (``$`` is the schema's root), or None."""
    if not isinstance(schema, dict):
        return _("The schema must be a JSON object, such as %(example)s.") % {
            "example": '{"type": "object", "properties": {…}}'
        }
    try:
        size = len(json.dumps(schema))
    except (TypeError, ValueError, RecursionError):
        return _("The schema must be plain JSON.")
    if size > MAX_SCHEMA_CHARS:
        return _("The schema is too long: at most %(count)s characters of JSON.") % {
            "count": f"{MAX_SCHEMA_CHARS:,}"
        }
    declared = schema.get("$schema")
    if declared is not None and not isinstance(declared, str):
        return _("$schema must be the URI of a JSON Schema draft.")
    validator = validator_for(schema, default=None)
    if validator is None:
        if declared is not None:
            return _("Unknown $schema %(uri)s: leave it out, or name a JSON Schema draft.") % {
                "uri": declared
            }
        validator = Draft202012Validator
    try:
        validator.check_schema(schema)
    except SchemaError as error:
        return _("Not valid JSON Schema at %(path)s: %(problem)s") % {
            "path": error.json_path,
            "problem": _short(error.message, 200),
        }
    except RecursionError:
        return _("The schema is nested too deeply.")
    if schema.get("type") != "object":
        return _('The schema must describe an object: its top level needs "type": "object".')
    return _ref_problem(schema, schema, "$")


def _ref_problem(root: dict[str, Any], node: object, path: str) -> str | None:
    """A ``$ref`` that does not point into the schema itself: an address to fetch (refused:
    the server fetches nothing for a tenant) or a part that does not exist."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            if (problem := _ref_problem(root, item, f"{path}[{index}]")) is not None:
                return problem
        return None
    if not isinstance(node, dict):
        return None
    ref = node.get("$ref")
    if isinstance(ref, str):  # (a property named "$ref" holds a schema, not a string)
        if not (ref == "#" or ref.startswith("#/")):
            return _(
                'A $ref may only point into the schema itself ("#/$defs/…"), not to %(ref)s '
                "(at %(path)s)."
            ) % {"ref": ref[:100], "path": path}
        if not _points_to_something(root, ref):
            return _("The $ref %(ref)s at %(path)s points to nothing in the schema.") % {
                "ref": ref[:100],
                "path": path,
            }
    for key, value in node.items():
        if (problem := _ref_problem(root, value, f"{path}.{key}")) is not None:
            return problem
    return None


def _points_to_something(root: dict[str, Any], ref: str) -> bool:
    target: Any = root
    for raw in ref.removeprefix("#").split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return False
    return True


def check_json_schema(value: object) -> dict[str, Any] | None:
    """A conversation's or persona's ``json_schema`` as stored: None (or "") for none, else
    OpenAI's json_schema object ``{"name", "schema", "strict"?, "description"?}`` (or its JSON
    text, from a form). Refused with ``invalid_json_schema`` naming what is wrong and where."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = _parse(value)
        except json.JSONDecodeError as error:
            _refuse(_("The JSON schema is not valid JSON: %(where)s.") % {"where": _where(error)})
        except (ValueError, RecursionError) as error:
            _refuse(_("The JSON schema is not valid JSON: %(why)s.") % {"why": error})
    if not isinstance(value, dict):
        _refuse(
            _("The JSON schema is an object with a name and a schema, such as %(example)s.")
            % {"example": EXAMPLE}
        )
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        message = _(
            "Unknown key in the JSON schema: %(key)s (it takes name, schema, strict and "
            "description)."
        )
        _refuse(message % {"key": unknown[0][:64]})
    name = value.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        _refuse(_("The JSON schema needs a name: 1 to 64 letters, digits, underscores or dashes."))
    description = value.get("description")
    if description is not None and not isinstance(description, str):
        _refuse(_("The JSON schema's description must be text."))
    strict = value.get("strict")
    if strict is not None and not isinstance(strict, bool):
        _refuse(_("The JSON schema's strict must be true or false."))
    if "schema" not in value:
        _refuse(_("The JSON schema needs a schema: the JSON Schema replies must match."))
    problem = schema_problem(value["schema"])
    if problem is not None:
        _refuse(problem)
    checked: dict[str, Any] = {"name": name}
    if description is not None:
        checked["description"] = description
    checked["schema"] = value["schema"]
    if strict is not None:
        checked["strict"] = strict
    return checked


def response_format_for(
    *, json_mode: bool, json_schema: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The ``response_format`` a reply is asked for: the schema if there is one, else any JSON
    object in JSON mode, else None (text)."""
    if json_schema:
        return {"type": "json_schema", "json_schema": json_schema}
    if json_mode:
        return {"type": "json_object"}
    return None


def _short(reason: str, limit: int = MAX_REASON_CHARS) -> str:
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "null" if value is None else "a number"


def _validator(schema: dict[str, Any]) -> Validator:
    cls = validator_for(schema, default=None) or Draft202012Validator
    # An empty registry: a $ref resolves inside the schema or not at all (jsonschema's default
    # would fetch a remote one, and the server fetches nothing for a tenant).
    return cls(schema, registry=_NO_RETRIEVAL)


def check_reply(text: str, response_format: dict[str, Any] | None) -> tuple[bool | None, str]:
    """Whether a finished reply is the JSON ``response_format`` asked for: None when JSON was
    not asked; ``(True, "")`` when it parses (and matches the schema, when one was given);
    ``(False, reason)`` otherwise, the reason (English, at most 300 characters) naming where
    it goes wrong (``$`` is the reply's top level)."""
    kind = response_format.get("type") if response_format else None
    if kind not in ("json_object", "json_schema"):
        return None, ""
    try:
        data = _parse(text)
    except json.JSONDecodeError as error:
        return False, _short(f"{NOT_JSON}: {_where(error)}")
    except (ValueError, RecursionError) as error:
        return False, _short(f"{NOT_JSON}: {error}")
    if not isinstance(data, dict):
        return False, _short(f"{NOT_AN_OBJECT}: the reply is {_json_kind(data)} at $")
    json_schema = response_format.get("json_schema") if response_format else None
    schema = json_schema.get("schema") if isinstance(json_schema, dict) else None
    if kind == "json_object" or not isinstance(schema, dict):
        return True, ""
    try:
        mismatch = best_match(_validator(schema).iter_errors(data))
    except Exception as exc:  # a schema saved before a check existed, a broken $ref
        logger.warning("Could not check a reply against its schema", exc_info=True)
        return False, _short(f"{UNCHECKED}: {type(exc).__name__}")
    if mismatch is None:
        return True, ""
    return False, _short(f"{NO_MATCH}: {mismatch.message} at {mismatch.json_path}")


def reason_text(json_error: str) -> str:
    """A stored ``check_reply`` reason in the reader's language (its prefix: the details are
    JSON's and jsonschema's own words)."""
    prefix, separator, rest = json_error.partition(": ")
    label = _PREFIXES.get(prefix)
    if label is None or not separator:
        return json_error or _("Not valid JSON.")
    return f"{label}: {rest}"
