"""An emulator of Argo Rollouts' web metric provider, for tests.

It calls our webhook the way the Argo Rollouts controller does and judges the answers with Argo's
rules, so a test can say "Argo would mark this rollout Failed" instead of "the JSON looks right".

Sources (argoproj/argo-rollouts, read through the search tool; behaviour, not code, is mirrored):
- metricproviders/webmetric/webmetric.go  Provider.Run / parseResponse / getValue
- utils/evaluate/evaluate.go               EvaluateResult / EvalCondition and the helpers
- analysis/analysis.go                     generateMetricTasks, runMeasurements, assessMetricStatus,
                                           assessMetricFailureInconclusiveOrError
- utils/template/template.go               ResolveArgs / resolve ({{args.NAME}} substitution)
- k8s.io/client-go/util/jsonpath          FindResults (the jsonPath)
- github.com/expr-lang/expr                parser operator table, vm/runtime (the conditions)
and /work/shared/spec/argo-web-provider.md.

Quirks of the real controller that are reproduced on purpose (tests must see them too):
- a 2xx body that is not JSON is Successful WITHOUT evaluating the conditions (value = raw body);
- a jsonPath outside braces is literal text: jsonPath "$.verdict" yields the string "$.verdict";
- isNil(x) and default(x, d) ignore x and look at the whole `result`;
- JSON numbers are float64; a missing map key reads as nil, comparing nil with a number is an error.
"""

from __future__ import annotations

import enum
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import yaml

__all__ = [
    "ConditionError",
    "JSONPathError",
    "JSONPathSyntaxError",
    "Measurement",
    "Metric",
    "MetricRun",
    "NoMatch",
    "OAuth2",
    "Phase",
    "TemplateError",
    "WebProvider",
    "client_for",
    "evaluate_condition",
    "go_json",
    "jsonpath_first",
    "load_template",
    "measure",
    "parse_duration",
    "phase_of",
    "run_metric",
]

DEFAULT_TIMEOUT_SECONDS = 10  # NewWebMetricHttpClient: timeoutSeconds <= 0 means 10 s
ERROR_RETRY_SECONDS = 10.0  # analysis.go DefaultErrorRetryInterval
DEFAULT_CONSECUTIVE_ERROR_LIMIT = 4  # defaults.GetConsecutiveErrorLimitOrDefault
GO_USER_AGENT = "Go-http-client/1.1"


class Phase(enum.StrEnum):
    """AnalysisPhase values. RUNNING only appears on a MetricRun cut off by max_measurements."""

    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"
    RUNNING = "Running"


class ConditionError(Exception):
    """A success/failure condition failed to compile or to run: the measurement is Error."""


class JSONPathError(ValueError):
    """The jsonPath could not be applied: the measurement is Error."""


class NoMatch(JSONPathError):
    """The jsonPath matched nothing ("... is not found", index out of bounds, empty result)."""


class JSONPathSyntaxError(JSONPathError):
    """The jsonPath does not parse (or uses syntax this emulator does not implement)."""


class TemplateError(ValueError):
    """The AnalysisTemplate is invalid or an argument is missing (Argo marks the run Error)."""


# --------------------------------------------------------------------------------------------
# Go-compatible JSON output (Measurement.value as Argo stores it)
# --------------------------------------------------------------------------------------------


def _go_float(number: float) -> str:
    # encoding/json: 'f' format inside [1e-6, 1e21), otherwise 'e' with a 2-digit exponent trimmed.
    if number == 0:
        return "-0" if math.copysign(1.0, number) < 0 else "0"
    if 1e-6 <= abs(number) < 1e21:
        return format(Decimal(repr(number)).normalize(), "f")
    return re.sub(r"e([+-])0(\d)$", r"e\1\2", repr(number))


def _go_string(text: str) -> str:
    encoded = json.dumps(text, ensure_ascii=False)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        encoded = encoded.replace(raw, escaped)
    return encoded


def go_json(value: Any) -> str:
    """Serialise like Go's json.Marshal: compact, map keys sorted, HTML characters escaped."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(go_json(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{_go_string(str(key))}:{go_json(value[key])}" for key in sorted(value))
        return "{" + ",".join(items) + "}"
    raise TypeError(f"cannot marshal {type(value).__name__}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character in JSON: {name}")  # Go has no NaN/Infinity literals


def _go_number(text: str) -> float:
    number = float(text)
    if math.isinf(number):  # Go: "cannot unmarshal number ... into float64"
        raise ValueError(f"number {text} out of float64 range")
    return number


def _parse_go_json(body: bytes) -> Any:
    """json.Unmarshal into interface{}: every number a float64; raises ValueError if not JSON."""
    text = body.decode("utf-8", errors="replace")
    return json.loads(
        text, parse_int=_go_number, parse_float=_go_number, parse_constant=_reject_constant
    )


# --------------------------------------------------------------------------------------------
# JSONPath (k8s.io/client-go/util/jsonpath, as NewWebMetricJsonParser + FindResults use it)
# --------------------------------------------------------------------------------------------

_NAME_TERMINATORS = frozenset(" \t\n.,[]$@{}()'\"")


@dataclass(frozen=True)
class _Field:
    name: str


@dataclass(frozen=True)
class _Slice:
    start: int | None
    end: int | None
    step: int | None
    end_derived: bool  # "[n]" is parsed as the slice [n:n+1] with a derived end


@dataclass(frozen=True)
class _Wildcard:
    pass


_Step = _Field | _Slice | _Wildcard


def _closing(text: str, start: int, closer: str) -> int:
    """Index of `closer` after `start`, skipping quoted parts; -1 if absent."""
    quote = ""
    for index in range(start, len(text)):
        char = text[index]
        if quote:
            if char == "\\":
                continue
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == closer:
            return index
    return -1


def _split_template(expr: str) -> list[tuple[bool, str]]:
    """Split into (is_action, text) parts: "{...}" actions and literal text between them."""
    parts: list[tuple[bool, str]] = []
    position = 0
    while position < len(expr):
        opening = expr.find("{", position)
        if opening < 0:
            parts.append((False, expr[position:]))
            break
        if opening > position:
            parts.append((False, expr[position:opening]))
        closing = _closing(expr, opening + 1, "}")
        if closing < 0:
            raise JSONPathSyntaxError(f"unclosed action in {expr!r}")
        parts.append((True, expr[opening + 1 : closing]))
        position = closing + 1
    return parts


def _read_name(text: str, index: int) -> tuple[str, int]:
    chars: list[str] = []
    while index < len(text) and text[index] not in _NAME_TERMINATORS:
        if text[index] == "\\" and index + 1 < len(text):
            index += 1  # "\." keeps a dot inside a field name
        chars.append(text[index])
        index += 1
    return "".join(chars), index


def _parse_int(text: str, source: str) -> int | None:
    text = text.strip()
    if text == "":
        return None
    if not re.fullmatch(r"[+-]?\d+", text):
        raise JSONPathSyntaxError(f"invalid array index {text!r} in {source!r}")
    return int(text)


def _parse_bracket(inner: str, source: str) -> _Step:
    inner = inner.strip()
    if inner == "*":
        return _Wildcard()
    if len(inner) >= 2 and inner[0] in "'\"" and inner[-1] == inner[0]:
        return _Field(inner[1:-1].replace("\\" + inner[0], inner[0]))
    if inner.startswith("?") or "," in inner:
        raise JSONPathSyntaxError(f"filters and unions are not emulated: {source!r}")
    pieces = inner.split(":")
    if len(pieces) > 3:
        raise JSONPathSyntaxError(f"invalid slice {inner!r}")
    if len(pieces) == 1:
        index = _parse_int(pieces[0], source)
        if index is None:
            raise JSONPathSyntaxError(f"empty index in {source!r}")
        return _Slice(index, index + 1, None, end_derived=True)
    start = _parse_int(pieces[0], source)
    end = _parse_int(pieces[1], source)
    step = _parse_int(pieces[2], source) if len(pieces) == 3 else None
    return _Slice(start, end, step, end_derived=False)


def _parse_action(action: str) -> list[_Step]:
    text = action.strip()
    if not text:
        raise JSONPathSyntaxError("empty action {}")
    steps: list[_Step] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char in "$@":  # root / current: evaluation starts at the document anyway
            index += 1
        elif char == ".":
            if text.startswith("..", index):
                raise JSONPathSyntaxError(f"recursive descent is not emulated: {action!r}")
            name, index = _read_name(text, index + 1)
            if name == "*":
                steps.append(_Wildcard())
            elif name:
                steps.append(_Field(name))
        elif char == "[":
            closing = _closing(text, index + 1, "]")
            if closing < 0:
                raise JSONPathSyntaxError(f"unclosed array index in {action!r}")
            steps.append(_parse_bracket(text[index + 1 : closing], action))
            index = closing + 1
        else:
            raise JSONPathSyntaxError(f"unrecognized character {char!r} in {action!r}")
    return steps


def _apply_field(values: list[Any], name: str) -> list[Any]:
    if not values:
        return []  # client-go: no input, no output (and no error)
    found = [value[name] for value in values if isinstance(value, dict) and name in value]
    if not found:
        raise NoMatch(f"{name} is not found")
    return found


def _apply_slice(values: list[Any], step: _Slice) -> list[Any]:
    found: list[Any] = []
    for value in values:
        if value is None:
            continue
        if not isinstance(value, list):
            raise NoMatch(f"{_go_type(value)} is not array or slice")
        length = len(value)
        start = 0 if step.start is None else step.start
        if start < 0:
            start += length
        end = length if step.end is None else step.end
        if end < 0 or (end == 0 and step.end_derived):
            end += length
        if start == end:
            continue  # asking for zero elements is allowed
        if start >= length or start < 0:
            raise NoMatch(f"array index out of bounds: index {start}, length {length}")
        if end > length or end < 0:
            raise NoMatch(f"array index out of bounds: index {end - 1}, length {length}")
        if start > end:
            raise NoMatch(f"starting index {start} is greater than ending index {end}")
        stride = 1 if step.step is None else step.step
        if stride <= 0:
            raise JSONPathSyntaxError("step must be > 0")
        found.extend(value[start:end:stride])
    return found


def _apply_wildcard(values: list[Any]) -> list[Any]:
    found: list[Any] = []
    for value in values:
        if isinstance(value, dict):
            # Go iterates maps in random order; insertion order is this emulator's choice.
            found.extend(value.values())
        elif isinstance(value, list):
            found.extend(value)
    return found


@lru_cache(maxsize=256)
def _compile_jsonpath(expr: str) -> tuple[tuple[bool, Any], ...]:
    template = expr if expr != "" else "{$}"  # NewWebMetricJsonParser's default
    compiled: list[tuple[bool, Any]] = []
    for is_action, text in _split_template(template):
        compiled.append((True, tuple(_parse_action(text))) if is_action else (False, text))
    return tuple(compiled)


def jsonpath_first(data: Any, expr: str) -> Any:
    """First value client-go's JSONPath finds in `data`, as Argo's getValue picks it.

    Every part of the template is evaluated (an error anywhere fails the whole path); literal text
    outside braces is itself a result. Raises NoMatch when nothing matches.
    """
    all_results: list[list[Any]] = []
    for is_action, payload in _compile_jsonpath(expr):
        if not is_action:
            all_results.append([payload])
            continue
        values: list[Any] = [data]
        for step in payload:
            if isinstance(step, _Field):
                values = _apply_field(values, step.name)
            elif isinstance(step, _Slice):
                values = _apply_slice(values, step)
            else:
                values = _apply_wildcard(values)
        all_results.append(values)
    for results in all_results:
        if results:
            return results[0]
    raise NoMatch("result of web metric produced no value")


# --------------------------------------------------------------------------------------------
# Conditions: the expr-lang subset Argo's EvalCondition exposes
# --------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _go_type(value: Any) -> str:
    """Go's %T of the value as Argo's evaluator would hold it (for error messages)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return type(value).__name__


_KEYWORD_OPERATORS = frozenset(
    {"and", "or", "not", "in", "matches", "contains", "startsWith", "endsWith"}
)
# Longest first, so "**" is not read as two "*".
_SYMBOLS = (
    "**", "??", "?.", "==", "!=", "<=", ">=", "&&", "||", "..", "<", ">", "+", "-", "*", "/",
    "%", "^", "!", "?", ":", ".", ",", "(", ")", "[", "]", "{", "}", "#",
)  # fmt: skip
# Binary operator precedence and associativity, from expr-lang's parser/operator tables.
_BINARY: dict[str, tuple[int, bool]] = {
    "or": (10, False), "||": (10, False), "and": (15, False), "&&": (15, False),
    "==": (20, False), "!=": (20, False), "<": (20, False), ">": (20, False), "<=": (20, False),
    ">=": (20, False), "in": (20, False), "not in": (20, False), "matches": (20, False),
    "contains": (20, False), "startsWith": (20, False), "endsWith": (20, False),
    "..": (25, False), "+": (30, False), "-": (30, False), "*": (60, False), "/": (60, False),
    "%": (60, False), "**": (100, True), "^": (100, True), "??": (500, False),
}  # fmt: skip
_UNARY = {"not": 50, "!": 50, "-": 90, "+": 90}
_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", "'": "'", '"': '"', "`": "`",
}  # fmt: skip


@dataclass(frozen=True)
class _Token:
    kind: str  # "number" | "string" | "name" | "op" | "eof"
    text: str
    value: Any
    position: int


def _unescape(body: str, source: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char != "\\":
            out.append(char)
            index += 1
            continue
        code = body[index + 1 : index + 2]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            index += 2
        elif code in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[code]
            digits = body[index + 2 : index + 2 + width]
            if not re.fullmatch(r"[0-9a-fA-F]+", digits) or len(digits) != width:
                raise ConditionError(f"invalid escape in string literal: {source!r}")
            out.append(chr(int(digits, 16)))
            index += 2 + width
        elif re.fullmatch(r"[0-7]{3}", body[index + 1 : index + 4]):
            out.append(chr(int(body[index + 1 : index + 4], 8)))
            index += 4
        else:
            raise ConditionError(f"invalid escape \\{code} in string literal: {source!r}")
    return "".join(out)


_NUMBER = re.compile(
    r"0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+"
    r"|\d[\d_]*(?:\.\d[\d_]*)?(?:[eE][+-]?\d+)?|\d[\d_]*[eE][+-]?\d+"
)
_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    while index < len(source):
        char = source[index]
        if char.isspace():
            index += 1
            continue
        if char.isdigit():
            match = _NUMBER.match(source, index)
            assert match is not None
            text = match.group().replace("_", "")
            prefixed = text[:2].lower() in ("0x", "0o", "0b")
            is_float = not prefixed and any(c in text for c in ".eE")
            value: Any = float(text) if is_float else int(text, 0 if prefixed else 10)
            tokens.append(_Token("number", match.group(), value, index))
            index = match.end()
        elif char in "\"'`":
            end = index + 1
            while end < len(source) and source[end] != char:
                end += 2 if source[end] == "\\" and char != "`" else 1
            if end >= len(source):
                raise ConditionError(f"literal not terminated: {source!r}")
            raw = source[index + 1 : end]
            text = raw if char == "`" else _unescape(raw, source)
            tokens.append(_Token("string", source[index : end + 1], text, index))
            index = end + 1
        elif _NAME.match(source, index):
            match = _NAME.match(source, index)
            assert match is not None
            word = match.group()
            kind = "op" if word in _KEYWORD_OPERATORS else "name"
            tokens.append(_Token(kind, word, word, index))
            index = match.end()
        else:
            for symbol in _SYMBOLS:
                if source.startswith(symbol, index):
                    tokens.append(_Token("op", symbol, symbol, index))
                    index += len(symbol)
                    break
            else:
                raise ConditionError(f"unrecognized character: {char!r} in {source!r}")
    tokens.append(_Token("eof", "", None, len(source)))
    return tokens


@dataclass
class _Scope:
    result: Any
    pointers: list[Any] = field(default_factory=list)


_Node = Callable[[_Scope], Any]


def _bool_operand(value: Any, operator: str) -> bool:
    # expr's VM asserts .(bool) for && || ! and ?: and panics on anything else.
    if not isinstance(value, bool):
        raise ConditionError(f"interface conversion: interface {{}} is {_go_type(value)}, not bool")
    return value


def _fetch(container: Any, key: Any) -> Any:
    """runtime.Fetch: map key (missing → nil), array/string index (negative from the end)."""
    if isinstance(container, dict):
        if not isinstance(key, str):
            raise ConditionError(f"cannot use {_go_type(key)} as map key")
        return container.get(key)
    if isinstance(container, list | str):
        if not _is_number(key):
            raise ConditionError(f"invalid operation: int({_go_type(key)})")
        items: list[Any] | bytes = container if isinstance(container, list) else container.encode()
        index = int(key)
        if index < 0:
            index += len(items)
        if not 0 <= index < len(items):
            raise ConditionError(f"index out of range: {index} (array length is {len(items)})")
        return items[index]  # a string index gives a byte (uint8), as in Go
    raise ConditionError(f"cannot fetch {key} from {_go_type(container)}")


def _equal(left: Any, right: Any) -> bool:
    """runtime.Equal: numbers across int/float, strings, both nil, else reflect.DeepEqual."""
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    if left is None and right is None:
        return True
    return _deep_equal(left, right)


def _deep_equal(left: Any, right: Any) -> bool:
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_deep_equal(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(_deep_equal, left, right))
    return bool(left == right)


def _ordered(operator: str, left: Any, right: Any) -> bool:
    both_numbers = _is_number(left) and _is_number(right)
    if not (both_numbers or (isinstance(left, str) and isinstance(right, str))):
        raise ConditionError(
            f"invalid operation: {operator} (mismatched types {_go_type(left)} and "
            f"{_go_type(right)})"
        )
    if operator == "<":
        return bool(left < right)
    if operator == "<=":
        return bool(left <= right)
    if operator == ">":
        return bool(left > right)
    return bool(left >= right)


def _numbers(operator: str, left: Any, right: Any) -> None:
    if not (_is_number(left) and _is_number(right)):
        raise ConditionError(f"invalid operation: {_go_type(left)} {operator} {_go_type(right)}")


def _divide(left: Any, right: Any) -> float:
    numerator, denominator = float(left), float(right)
    if denominator == 0:  # IEEE division as in Go, no exception
        if numerator == 0 or math.isnan(numerator):
            return math.nan
        return math.copysign(math.inf, numerator) * math.copysign(1.0, denominator)
    return numerator / denominator


def _arithmetic(operator: str, left: Any, right: Any) -> Any:
    if operator == "+" and isinstance(left, str) and isinstance(right, str):
        return left + right
    _numbers(operator, left, right)
    both_ints = isinstance(left, int) and isinstance(right, int)
    if operator == "+":
        return left + right
    if operator == "-":
        return left - right
    if operator == "*":
        return left * right
    if operator == "/":
        return _divide(left, right)
    if operator == "%":
        if not both_ints:
            raise ConditionError(f"invalid operation: {_go_type(left)} % {_go_type(right)}")
        if right == 0:
            raise ConditionError("runtime error: integer divide by zero")
        remainder = abs(left) % abs(right)  # Go truncates toward zero
        return remainder if left >= 0 else -remainder
    try:  # ** and ^ are math.Pow
        return math.pow(float(left), float(right))
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan


def _membership(needle: Any, haystack: Any) -> bool:
    """runtime.In: element of an array (by Equal) or key of a map; nil haystack is false."""
    if haystack is None:
        return False
    if isinstance(haystack, list):
        return any(_equal(item, needle) for item in haystack)
    if isinstance(haystack, dict):
        if needle is None:
            return "" in haystack
        if not isinstance(needle, str):
            raise ConditionError(f"cannot use {_go_type(needle)} as map key")
        return needle in haystack
    raise ConditionError(f'operator "in" not defined on {_go_type(haystack)}')


def _string_operator(operator: str, left: Any, right: Any) -> bool:
    if not (isinstance(left, str) and isinstance(right, str)):
        raise ConditionError(
            f"invalid operation: {operator} (mismatched types {_go_type(left)} and "
            f"{_go_type(right)})"
        )
    if operator == "contains":
        return right in left
    if operator == "startsWith":
        return left.startswith(right)
    if operator == "endsWith":
        return left.endswith(right)
    try:  # matches: RE2 and Python re agree on the common subset
        return re.search(right, left) is not None
    except re.error as error:
        raise ConditionError(f"error parsing regexp: {error}") from error


# ---- Argo's helpers (utils/evaluate) and a few expr builtins --------------------------------

_GO_INT = re.compile(r"[+-]?\d+")
_GO_FLOAT = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)", re.IGNORECASE
)


def _as_int(value: Any) -> int:
    """asInt: numbers truncated, strings by strconv.ParseInt(s, 10, 64); anything else panics."""
    if _is_number(value):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConditionError(f"asInt() not supported on float64 {value}")
        return int(value)
    if isinstance(value, str):
        if not _GO_INT.fullmatch(value) or not -(2**63) <= int(value) < 2**63:
            raise ConditionError(f'strconv.ParseInt: parsing "{value}": invalid syntax')
        return int(value)
    raise ConditionError(f"asInt() not supported on {_go_type(value)} {value}")


def _as_float(value: Any) -> float:
    """asFloat: numbers as float64, strings by strconv.ParseFloat(s, 64); anything else panics."""
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        if not _GO_FLOAT.fullmatch(value):
            raise ConditionError(f'strconv.ParseFloat: parsing "{value}": invalid syntax')
        number = float(value)
        if math.isinf(number) and "inf" not in value.lower():
            raise ConditionError(f'strconv.ParseFloat: parsing "{value}": value out of range')
        return number
    raise ConditionError(f"asFloat() not supported on {_go_type(value)} {value}")


def _float64_argument(name: str, value: Any) -> float:
    # isNaN/isInf are Go funcs taking float64; reflect.Call panics on any other type.
    if not isinstance(value, float):
        raise ConditionError(f"reflect: Call using {_go_type(value)} as type float64 ({name})")
    return value


def _length(value: Any) -> int:
    if isinstance(value, list | dict):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    raise ConditionError(f"invalid argument for len (type {_go_type(value)})")


def _to_int(value: Any) -> int:
    if _is_number(value):
        return int(value)
    if isinstance(value, str) and _GO_INT.fullmatch(value):
        return int(value)
    raise ConditionError(f"invalid operation: int({_go_type(value)})")


def _to_float(value: Any) -> float:
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        return _as_float(value)
    raise ConditionError(f"invalid operation: float({_go_type(value)})")


def _to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value) if abs(value) < 1e21 else repr(value)
    return go_json(value)


def _strings(name: str, function: Callable[[str], Any]) -> Callable[[Any], Any]:
    def call(value: Any) -> Any:
        if not isinstance(value, str):
            raise ConditionError(f"{name}: argument must be string, got {_go_type(value)}")
        return function(value)

    return call


def _mapping(name: str, function: Callable[[dict[str, Any]], Any]) -> Callable[[Any], Any]:
    def call(value: Any) -> Any:
        if not isinstance(value, dict):
            raise ConditionError(f"{name}: argument must be map, got {_go_type(value)}")
        return function(value)

    return call


def _absolute(value: Any) -> Any:
    _numbers("abs", value, 0)
    return abs(value)


# name -> (number of arguments, function of the evaluated arguments and the scope)
_FUNCTIONS: dict[str, tuple[int, Callable[[list[Any], _Scope], Any]]] = {
    "asInt": (1, lambda args, scope: _as_int(args[0])),
    "asFloat": (1, lambda args, scope: _as_float(args[0])),
    "isNaN": (1, lambda args, scope: math.isnan(_float64_argument("isNaN", args[0]))),
    "isInf": (1, lambda args, scope: math.isinf(_float64_argument("isInf", args[0]))),
    # Argo's isNil/default close over `result` and ignore their first argument.
    "isNil": (1, lambda args, scope: scope.result is None),
    "default": (2, lambda args, scope: args[1] if scope.result is None else scope.result),
    "len": (1, lambda args, scope: _length(args[0])),
    "abs": (1, lambda args, scope: _absolute(args[0])),
    "int": (1, lambda args, scope: _to_int(args[0])),
    "float": (1, lambda args, scope: _to_float(args[0])),
    "string": (1, lambda args, scope: _to_string(args[0])),
    "upper": (1, lambda args, scope: _strings("upper", str.upper)(args[0])),
    "lower": (1, lambda args, scope: _strings("lower", str.lower)(args[0])),
    "trim": (1, lambda args, scope: _strings("trim", str.strip)(args[0])),
    "keys": (1, lambda args, scope: _mapping("keys", lambda m: list(m))(args[0])),
    "values": (1, lambda args, scope: _mapping("values", lambda m: list(m.values()))(args[0])),
}
_PREDICATE_BUILTINS = frozenset({"all", "any", "none", "one", "filter", "map", "count"})


def _apply_predicate(name: str, items: Any, body: _Node, scope: _Scope) -> Any:
    if not isinstance(items, list):
        raise ConditionError(f"cannot iterate over {_go_type(items)}")
    outputs: list[tuple[Any, Any]] = []
    for item in items:
        scope.pointers.append(item)
        try:
            outputs.append((item, body(scope)))
        finally:
            scope.pointers.pop()
        if name == "map":
            continue
        verdict = _bool_operand(outputs[-1][1], name)
        # all/any/none stop early like expr does, so later elements cannot raise
        if (name == "all" and not verdict) or (name in ("any", "none") and verdict):
            break
    if name == "map":
        return [output for _, output in outputs]
    matched = [item for item, output in outputs if output]
    if name == "all":
        return all(output for _, output in outputs)
    if name == "any":
        return bool(matched)
    if name == "none":
        return not matched
    if name == "one":
        return len(matched) == 1
    if name == "filter":
        return matched
    return len(matched)  # count


class _Parser:
    """Recursive descent over expr-lang's grammar (parser/parser.go precedence climbing)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokenize(source)
        self.index = 0
        self.closure_depth = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def peek(self, offset: int = 1) -> _Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.current
        self.index += 1
        return token

    def is_op(self, text: str) -> bool:
        return self.current.kind == "op" and self.current.text == text

    def expect(self, text: str) -> None:
        if not self.is_op(text):
            found = self.current.text or "EOF"
            raise ConditionError(
                f"unexpected token {found!r}, expected {text!r} "
                f"(column {self.current.position}) in {self.source!r}"
            )
        self.advance()

    def parse(self) -> _Node:
        node = self.expression(0)
        if self.current.kind != "eof":
            raise ConditionError(
                f"unexpected token {self.current.text!r} (column {self.current.position}) "
                f"in {self.source!r}"
            )
        return node

    def binary_operator(self) -> str | None:
        token = self.current
        if token.kind != "op":
            return None
        if token.text == "not" and self.peek().kind == "op" and self.peek().text == "in":
            return "not in"
        return token.text if token.text in _BINARY else None

    def expression(self, min_precedence: int) -> _Node:
        left = self.primary()
        while (operator := self.binary_operator()) is not None:
            precedence, right_assoc = _BINARY[operator]
            if precedence < min_precedence:
                break
            self.advance()
            if operator == "not in":
                self.advance()
            right = self.expression(precedence if right_assoc else precedence + 1)
            left = self.make_binary(operator, left, right)
        if min_precedence == 0 and self.is_op("?"):
            left = self.conditional(left)
        return left

    def conditional(self, condition: _Node) -> _Node:
        self.advance()
        when_true = self.expression(0)
        self.expect(":")
        when_false = self.expression(0)

        def node(scope: _Scope) -> Any:
            chosen = when_true if _bool_operand(condition(scope), "?:") else when_false
            return chosen(scope)

        return node

    @staticmethod
    def make_binary(operator: str, left: _Node, right: _Node) -> _Node:
        if operator in ("&&", "and"):
            return lambda scope: right(scope) if _bool_operand(left(scope), operator) else False
        if operator in ("||", "or"):
            return lambda scope: True if _bool_operand(left(scope), operator) else right(scope)
        if operator == "??":

            def coalesce(scope: _Scope) -> Any:
                value = left(scope)
                return right(scope) if value is None else value

            return coalesce
        if operator == "==":
            return lambda scope: _equal(left(scope), right(scope))
        if operator == "!=":
            return lambda scope: not _equal(left(scope), right(scope))
        if operator in ("<", "<=", ">", ">="):
            return lambda scope: _ordered(operator, left(scope), right(scope))
        if operator == "in":
            return lambda scope: _membership(left(scope), right(scope))
        if operator == "not in":
            return lambda scope: not _membership(left(scope), right(scope))
        if operator in ("matches", "contains", "startsWith", "endsWith"):
            return lambda scope: _string_operator(operator, left(scope), right(scope))
        if operator == "..":

            def span(scope: _Scope) -> list[int]:
                low, high = left(scope), right(scope)
                if not (isinstance(low, int) and isinstance(high, int)) or isinstance(low, bool):
                    raise ConditionError("invalid operation: .. needs int operands")
                return list(range(low, high + 1))

            return span
        return lambda scope: _arithmetic(operator, left(scope), right(scope))

    def primary(self) -> _Node:
        token = self.current
        if token.kind == "op" and token.text in _UNARY:
            self.advance()
            operand = self.expression(_UNARY[token.text])
            return self.postfix(self.make_unary(token.text, operand))
        return self.postfix(self.operand())

    @staticmethod
    def make_unary(operator: str, operand: _Node) -> _Node:
        if operator in ("not", "!"):
            return lambda scope: not _bool_operand(operand(scope), operator)

        def sign(scope: _Scope) -> Any:
            value = operand(scope)
            if not _is_number(value):
                raise ConditionError(f"invalid operation: {operator}{_go_type(value)}")
            return -value if operator == "-" else value

        return sign

    def operand(self) -> _Node:
        token = self.advance()
        if token.kind in ("number", "string"):
            literal = token.value
            return lambda scope: literal
        if token.kind == "name":
            return self.name(token)
        if token.kind == "op":
            if token.text == "(":
                inner = self.expression(0)
                self.expect(")")
                return inner
            if token.text == "[":
                return self.array_literal()
            if token.text == "{":
                return self.map_literal()
            if token.text == "#" and self.closure_depth > 0:
                return lambda scope: scope.pointers[-1]
            if token.text == "." and self.closure_depth > 0 and self.current.kind == "name":
                member = self.advance().text  # ".field" is shorthand for "#.field"
                return lambda scope: _fetch(scope.pointers[-1], member)
        found = token.text or "EOF"
        raise ConditionError(
            f"unexpected token {found!r} (column {token.position}) in {self.source!r}"
        )

    def name(self, token: _Token) -> _Node:
        word = token.text
        if word in ("true", "false"):
            constant = word == "true"
            return lambda scope: constant
        if word == "nil":
            return lambda scope: None
        if word == "result":
            return lambda scope: scope.result
        if self.is_op("("):
            return self.call(word)
        raise ConditionError(f"unknown name {word} (column {token.position}) in {self.source!r}")

    def call(self, name: str) -> _Node:
        self.expect("(")
        if name in _PREDICATE_BUILTINS:
            items = self.expression(0)
            self.expect(",")
            body = self.closure()
            self.expect(")")
            return lambda scope: _apply_predicate(name, items(scope), body, scope)
        if name not in _FUNCTIONS:
            raise ConditionError(f"unknown func {name} in {self.source!r}")
        arguments: list[_Node] = []
        while not self.is_op(")"):
            arguments.append(self.expression(0))
            if not self.is_op(")"):
                self.expect(",")
        self.expect(")")
        arity, function = _FUNCTIONS[name]
        if len(arguments) != arity:
            quantity = "not enough" if len(arguments) < arity else "too many"
            raise ConditionError(f"{quantity} arguments to call {name} in {self.source!r}")
        return lambda scope: function([argument(scope) for argument in arguments], scope)

    def closure(self) -> _Node:
        self.closure_depth += 1
        try:
            if self.is_op("{"):
                self.advance()
                body = self.expression(0)
                self.expect("}")
                return body
            return self.expression(0)
        finally:
            self.closure_depth -= 1

    def array_literal(self) -> _Node:
        elements: list[_Node] = []
        while not self.is_op("]"):
            elements.append(self.expression(0))
            if not self.is_op("]"):
                self.expect(",")
        self.expect("]")
        return lambda scope: [element(scope) for element in elements]

    def map_literal(self) -> _Node:
        entries: list[tuple[str, _Node]] = []
        while not self.is_op("}"):
            key = self.advance()
            if key.kind not in ("name", "string", "number"):
                raise ConditionError(f"a map key must be a name or a string in {self.source!r}")
            self.expect(":")
            entries.append((str(key.value), self.expression(0)))
            if not self.is_op("}"):
                self.expect(",")
        self.expect("}")
        return lambda scope: {key: value(scope) for key, value in entries}

    def postfix(self, node: _Node) -> _Node:
        optional_chain = False  # after "?.", the rest of the chain is nil-safe too
        while True:
            if self.is_op(".") or self.is_op("?."):
                optional_chain = optional_chain or self.current.text == "?."
                self.advance()
                member = self.advance()
                if member.kind not in ("name", "op") or not _NAME.fullmatch(member.text):
                    raise ConditionError(f"expected name after '.' in {self.source!r}")
                node = self.member(node, _constant(member.text), optional_chain)
            elif self.is_op("["):
                self.advance()
                key_node = self.expression(0)
                self.expect("]")
                node = self.member(node, key_node, optional_chain)
            else:
                return node

    @staticmethod
    def member(container: _Node, key: _Node, nil_safe: bool) -> _Node:
        def fetch(scope: _Scope) -> Any:
            value = container(scope)
            if value is None and nil_safe:
                return None
            return _fetch(value, key(scope))

        return fetch


def _constant(value: Any) -> _Node:
    return lambda scope: value


@lru_cache(maxsize=512)
def _compile_condition(expr: str) -> _Node:
    return _Parser(expr).parse()


def evaluate_condition(expr: str, result: Any) -> bool:
    """Evaluate an Argo success/failure condition against `result` (EvalCondition).

    Raises ConditionError for anything expr would reject at compile or run time, including a
    non-bool outcome ("expected bool, but got ...").
    """
    try:
        output = _compile_condition(expr)(_Scope(result))
    except ConditionError:
        raise
    except (ArithmeticError, ValueError, TypeError, LookupError, RecursionError) as error:
        # expr turns Go panics (overflow, NaN to int, ...) into errors; so does the emulator
        raise ConditionError(f"{type(error).__name__}: {error}") from error
    if not isinstance(output, bool):
        raise ConditionError(f"expected bool, but got {_go_type(output)}")
    return output


def _evaluate_result(result: Any, success: str, failure: str) -> Phase:
    """utils/evaluate EvaluateResult: combine the two conditions into a measurement phase."""
    succeeded = evaluate_condition(success, result) if success else False
    failed = evaluate_condition(failure, result) if failure else False
    if not success and not failure:
        return Phase.SUCCESSFUL
    if success and not failure:
        failed = not succeeded
    elif failure and not success:
        succeeded = not failed
    if failed:
        return Phase.FAILED
    if not succeeded:
        return Phase.INCONCLUSIVE
    return Phase.SUCCESSFUL


# --------------------------------------------------------------------------------------------
# One measurement
# --------------------------------------------------------------------------------------------


@dataclass
class OAuth2:
    """provider.web.authentication.oauth2 (client-credentials flow)."""

    token_url: str
    client_id: str = ""
    client_secret: str = ""
    scopes: list[str] = field(default_factory=list)


@dataclass
class WebProvider:
    """provider.web of a metric, after {{args.*}} substitution."""

    url: str
    method: str = "GET"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""
    json_body: Any = None  # None means absent; {} is a (non-empty) JSON body
    json_path: str = ""  # "" means "{$}"
    timeout_seconds: int = 0  # <= 0 means DEFAULT_TIMEOUT_SECONDS
    insecure: bool = False
    oauth2: OAuth2 | None = None

    @property
    def effective_timeout(self) -> float:
        return float(self.timeout_seconds if self.timeout_seconds > 0 else DEFAULT_TIMEOUT_SECONDS)


@dataclass
class Measurement:
    """One measurement. `value` is the result the conditions saw; `value_text` is what Argo
    stores in status.metricResults[].measurements[].value (Go JSON, or the raw non-JSON body)."""

    phase: Phase
    value: Any = None
    value_text: str = ""
    status_code: int | None = None
    elapsed_seconds: float = 0.0
    message: str = ""


@dataclass
class _ReadOutcome:
    phase: Phase
    value: Any = None
    value_text: str = ""
    message: str = ""


def _read_response(
    status: int, body: bytes | str, json_path: str, success: str, failure: str
) -> _ReadOutcome:
    """Provider.Run after the call + parseResponse: status check, JSON, jsonPath, conditions."""
    if status < 200 or status >= 300:
        return _ReadOutcome(Phase.ERROR, message=f"received non 2xx response code: {status}")
    raw = body.encode() if isinstance(body, str) else body
    try:
        data = _parse_go_json(raw)
    except ValueError:
        # webmetric.go returns non-JSON bodies as Successful without evaluating the conditions.
        text = raw.decode("utf-8", errors="replace")
        return _ReadOutcome(Phase.SUCCESSFUL, value=text, value_text=text)
    try:
        value = jsonpath_first(data, json_path)
    except NoMatch as error:
        prefix = "" if "produced no value" in str(error) else "Could not find JSONPath in body: "
        return _ReadOutcome(Phase.ERROR, message=f"{prefix}{error}")
    except JSONPathError as error:
        return _ReadOutcome(Phase.ERROR, message=f"Error in getting metric provider: {error}")
    value_text = go_json(value)
    try:
        phase = _evaluate_result(value, success, failure)
    except ConditionError as error:
        return _ReadOutcome(Phase.ERROR, value=value, value_text=value_text, message=str(error))
    return _ReadOutcome(phase, value=value, value_text=value_text)


def phase_of(status: int, body: bytes | str, json_path: str, success: str, failure: str) -> Phase:
    """The phase Argo gives a response with this status and body."""
    return _read_response(status, body, json_path, success, failure).phase


def client_for(web: WebProvider, **client_options: Any) -> httpx.Client:
    """An httpx client configured like NewWebMetricHttpClient (timeout, `insecure`)."""
    return httpx.Client(timeout=web.effective_timeout, verify=not web.insecure, **client_options)


def _go_error(method: str, url: str, detail: str) -> str:
    return f'{method.capitalize()} "{url}": {detail}'


def _oauth2_token(client: httpx.Client, oauth: OAuth2, timeout: float) -> str:
    """golang.org/x/oauth2 clientcredentials: credentials in a Basic header, then in the form."""
    form = {"grant_type": "client_credentials"}
    if oauth.scopes:
        form["scope"] = " ".join(oauth.scopes)
    in_params = {**form, "client_id": oauth.client_id, "client_secret": oauth.client_secret}
    problem = "no attempt"
    for in_header in (True, False):
        if in_header:
            basic = httpx.BasicAuth(oauth.client_id, oauth.client_secret)
            response = client.post(oauth.token_url, data=form, auth=basic, timeout=timeout)
        else:
            response = client.post(oauth.token_url, data=in_params, timeout=timeout)
        if 200 <= response.status_code < 300:
            try:
                payload = response.json()
            except ValueError:
                payload = {}
            token = payload.get("access_token", "") if isinstance(payload, dict) else ""
            if token:
                return str(token)
            problem = "server response missing access_token"
        else:
            problem = f"cannot fetch token: {response.status_code}\nResponse: {response.text}"
    raise httpx.HTTPError(f"oauth2: {problem}")


def _build_request(client: httpx.Client, web: WebProvider, method: str) -> httpx.Request:
    user_headers: dict[str, tuple[str, str]] = {}
    for key, value in web.headers:
        user_headers[key.lower()] = (key, value)  # http.Header.Set: the last one wins
    content: bytes | None = None
    if web.body:
        content = web.body.encode()
    elif web.json_body is not None:
        content = go_json(web.json_body).encode()
        user_headers["content-type"] = ("Content-Type", "application/json")
    request = client.build_request(
        method,
        web.url,
        content=content,
        headers={key: value for key, value in user_headers.values()},
        timeout=httpx.Timeout(web.effective_timeout),
    )
    # Present the request like Go's net/http client rather than like httpx.
    if "user-agent" not in user_headers:
        request.headers["User-Agent"] = GO_USER_AGENT
    if "accept" not in user_headers and "accept" in request.headers:
        del request.headers["Accept"]
    if "accept-encoding" not in user_headers:
        request.headers["Accept-Encoding"] = "gzip"
    return request


def measure(
    client: httpx.Client,
    web: WebProvider,
    success: str,
    failure: str,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Measurement:
    """Take one measurement as webmetric.Provider.Run does (never raises for HTTP problems).

    The whole call, body included, must finish within the provider's timeoutSeconds, which is
    real time: it is never scaled.
    """
    started = clock()
    method = (web.method or "GET").upper()

    def error(message: str, status: int | None = None) -> Measurement:
        return Measurement(
            Phase.ERROR, status_code=status, elapsed_seconds=clock() - started, message=message
        )

    if web.body and web.json_body is not None:
        return error("use either Body or JSONBody; both cannot exists for WebMetric payload")
    if (web.body or web.json_body is not None) and method == "GET":
        return error("Body/JSONBody can only be used with POST or PUT WebMetric Method types")
    deadline = time.monotonic() + web.effective_timeout
    try:
        request = _build_request(client, web, method)
        if web.oauth2 is not None:
            token = _oauth2_token(client, web.oauth2, web.effective_timeout)
            request.headers["Authorization"] = f"Bearer {token}"
        response = client.send(request, stream=True, follow_redirects=True)
        try:
            status = response.status_code
            if status < 200 or status >= 300:
                return error(f"received non 2xx response code: {status}", status)
            chunks: list[bytes] = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("body not read in time")
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("response not complete in time")
        finally:
            response.close()
    except httpx.TimeoutException:
        detail = "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        return error(_go_error(method, web.url, detail))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return error(_go_error(method, web.url, str(exc) or type(exc).__name__))
    outcome = _read_response(status, b"".join(chunks), web.json_path, success, failure)
    return Measurement(
        outcome.phase,
        value=outcome.value,
        value_text=outcome.value_text,
        status_code=status,
        elapsed_seconds=clock() - started,
        message=outcome.message,
    )


# --------------------------------------------------------------------------------------------
# The measurement loop of one metric
# --------------------------------------------------------------------------------------------


@dataclass
class Metric:
    """One web metric of an AnalysisTemplate; durations in seconds, None when not set."""

    name: str
    web: WebProvider
    success_condition: str = ""
    failure_condition: str = ""
    interval: float | None = None
    initial_delay: float | None = None
    count: int | None = None  # None or 0: one measurement without interval, endless with one
    failure_limit: int = 0  # -1 disables it (only with consecutive_success_limit)
    inconclusive_limit: int = 0
    consecutive_error_limit: int = DEFAULT_CONSECUTIVE_ERROR_LIMIT
    consecutive_success_limit: int = 0  # 0 disables it

    @property
    def effective_count(self) -> int | None:
        """Metric.EffectiveCount: no count means 1 without an interval, unbounded with one."""
        if not self.count:
            return 1 if self.interval is None else None
        return self.count


@dataclass
class MetricRun:
    """The outcome of run_metric: the metric's phase and every measurement taken."""

    phase: Phase
    measurements: list[Measurement]
    message: str = ""
    waits: list[float] = field(default_factory=list)  # unscaled seconds waited, in order
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    error: int = 0
    count: int = 0  # measurements that were not Error (MetricResult.Count)
    consecutive_error: int = 0
    consecutive_success: int = 0

    @property
    def ended_after(self) -> int:
        """How many measurements had been taken when the metric ended."""
        return len(self.measurements)

    def record(self, phase: Phase) -> None:
        """runMeasurements' bookkeeping for one completed measurement."""
        if phase is Phase.ERROR:
            self.error += 1
            self.consecutive_error += 1
            self.consecutive_success = 0
            return
        self.count += 1
        self.consecutive_error = 0
        if phase is Phase.SUCCESSFUL:
            self.successful += 1
            self.consecutive_success += 1
            return
        self.consecutive_success = 0
        if phase is Phase.FAILED:
            self.failed += 1
        else:
            self.inconclusive += 1


def validate_metric(metric: Metric) -> str:
    """utils/analysis ValidateMetric (the parts that apply to a web metric); "" when valid."""
    count = metric.count or 0
    if count > 0:
        if count < metric.failure_limit:
            return "count must be >= failureLimit"
        if count < metric.inconclusive_limit:
            return "count must be >= inconclusiveLimit"
        if count < metric.consecutive_success_limit:
            return "count must be >= consecutiveSuccessLimit"
    if count > 1 and metric.interval is None:
        return "interval must be specified when count > 1"
    if metric.consecutive_error_limit < 0:
        return "consecutiveErrorLimit must be >= 0"
    if metric.inconclusive_limit < 0:
        return "inconclusiveLimit must be >= 0"
    if metric.consecutive_success_limit < 0:
        return "consecutiveSuccessLimit must be >= 0"
    if metric.failure_limit < -1 or (
        metric.failure_limit == -1 and metric.consecutive_success_limit == 0
    ):
        return "failureLimit must be >= 0 (or -1 together with consecutiveSuccessLimit > 0)"
    return ""


def assess_metric(metric: Metric, run: MetricRun) -> tuple[Phase, str]:
    """analysis.go assessMetricStatus after a completed measurement (not terminating).

    Failure, inconclusive and error limits come from assessMetricFailureInconclusiveOrError, in
    that order, a later one overriding an earlier one. The consecutiveSuccessLimit branch follows
    Argo v1.8+ (failureLimit -1 disables failures; at count with both limits in play and neither
    reached the metric is Inconclusive); that newer code was not in the stored sources, so it is
    written from Argo's documentation of the feature.
    """
    phase: Phase | None = None
    message = ""
    if metric.failure_limit >= 0 and run.failed > metric.failure_limit:
        phase = Phase.FAILED
        message = f"failed ({run.failed}) > failureLimit ({metric.failure_limit})"
    if run.inconclusive > metric.inconclusive_limit:
        phase = Phase.INCONCLUSIVE
        message = (
            f"inconclusive ({run.inconclusive}) > inconclusiveLimit ({metric.inconclusive_limit})"
        )
    if run.consecutive_error > metric.consecutive_error_limit:
        phase = Phase.ERROR
        message = (
            f"consecutiveErrors ({run.consecutive_error}) > consecutiveErrorLimit "
            f"({metric.consecutive_error_limit})"
        )
    if phase is not None:
        return phase, message
    success_limit = metric.consecutive_success_limit
    if success_limit > 0 and run.consecutive_success >= success_limit:
        return Phase.SUCCESSFUL, f"ConsecutiveSuccessLimit ({success_limit}) Reached"
    count = metric.effective_count
    if count is not None and run.count >= count:
        if success_limit > 0 and metric.failure_limit >= 0:
            return Phase.INCONCLUSIVE, (
                f"ConsecutiveSuccessLimit ({success_limit}) Not Reached and FailureLimit "
                f"({metric.failure_limit}) Not Violated"
            )
        if success_limit > 0:
            return Phase.FAILED, f"ConsecutiveSuccessLimit ({success_limit}) Not Reached"
        return Phase.SUCCESSFUL, f"Count ({count}) Reached"
    return Phase.RUNNING, ""


def _rebase(url: str, base_url: str) -> str:
    target, base = urlsplit(url), urlsplit(base_url)
    return urlunsplit((base.scheme, base.netloc, target.path, target.query, target.fragment))


def run_metric(
    metric: Metric,
    client: httpx.Client,
    *,
    base_url: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    time_scale: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    max_measurements: int = 50,
) -> MetricRun:
    """Run one metric of an AnalysisRun to completion, the way the controller schedules it.

    initialDelay, then a measurement; after each one the metric is assessed and, if still
    running, the next comes `interval` later, or ERROR_RETRY_SECONDS later after an Error.
    Waits go through `sleep(seconds * time_scale)` and are also listed unscaled in `waits`.
    `base_url` replaces scheme://host:port of the metric URL (a template's in-cluster URL can then
    hit a test server). A metric without count that never concludes stops after
    `max_measurements` with phase RUNNING.
    """
    run = MetricRun(Phase.RUNNING, [])
    problem = validate_metric(metric)
    if problem:
        run.phase, run.message = Phase.ERROR, f"Analysis spec invalid: {problem}"
        return run
    web = (
        metric.web
        if base_url is None
        else replace(metric.web, url=_rebase(metric.web.url, base_url))
    )

    def wait(seconds: float) -> None:
        run.waits.append(seconds)
        sleep(seconds * time_scale)

    if metric.initial_delay:
        wait(metric.initial_delay)
    while True:
        measurement = measure(
            client, web, metric.success_condition, metric.failure_condition, clock=clock
        )
        run.measurements.append(measurement)
        run.record(measurement.phase)
        run.phase, run.message = assess_metric(metric, run)
        if run.phase is not Phase.RUNNING:
            return run
        if len(run.measurements) >= max_measurements:
            run.message = f"still running after {max_measurements} measurements"
            return run
        if measurement.phase is Phase.ERROR or metric.interval is None:
            wait(ERROR_RETRY_SECONDS)  # generateMetricTasks: errors retry after 10 s
        else:
            wait(metric.interval)


# --------------------------------------------------------------------------------------------
# AnalysisTemplate loading
# --------------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}  # fmt: skip


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration ("30s", "1m30s", "1.5h", "0"), in seconds."""
    rest = text.strip()
    sign = -1.0 if rest.startswith("-") else 1.0
    rest = rest.lstrip("+-")
    if rest == "0":
        return 0.0
    if not rest:
        raise TemplateError(f"invalid duration {text!r}")
    total = 0.0
    position = 0
    while position < len(rest):
        match = _DURATION_PART.match(rest, position)
        if match is None or match.group(1) in ("", "."):
            raise TemplateError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    return sign * total


def _int_or_string(value: Any, default: int) -> int:
    """intstr.IntOrString.IntValue(): a string that is not a number counts as 0."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise TemplateError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else 0


_TAG = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


def _substitute(text: str, values: dict[str, str]) -> str:
    """template.resolve: every {{tag}} must name a known arg (surrounding spaces trimmed)."""
    if "{{" in text and "}}" not in text[text.index("{{") :]:
        raise TemplateError(f"cannot find end tag in {text!r}")

    def replace_tag(match: re.Match[str]) -> str:
        tag = match.group(1).strip()
        if tag not in values:
            raise TemplateError(f"failed to resolve {{{{{match.group(1)}}}}}")
        return values[tag]

    return _TAG.sub(replace_tag, text)


def _substitute_all(node: Any, values: dict[str, str]) -> Any:
    # Argo substitutes on the whole metric serialised as JSON: every string, keys included.
    if isinstance(node, str):
        return _substitute(node, values)
    if isinstance(node, list):
        return [_substitute_all(item, values) for item in node]
    if isinstance(node, dict):
        return {
            _substitute(str(key), values): _substitute_all(item, values)
            for key, item in node.items()
        }
    return node


def _resolve_args(spec_args: list[dict[str, Any]], supplied: dict[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for arg in spec_args:
        name = str(arg.get("name", ""))
        if name in supplied:
            values[f"args.{name}"] = str(supplied[name])
        elif arg.get("value") is not None:
            values[f"args.{name}"] = str(arg["value"])
        elif arg.get("valueFrom"):
            source = ", ".join(sorted(arg["valueFrom"]))
            raise TemplateError(f'argument "{name}" comes from {source}: supply it in args')
        else:
            raise TemplateError(f'argument "{name}" was not supplied')
    return values  # args the template does not declare are ignored, as MergeArgs does


def _optional_duration(value: Any) -> float | None:
    return None if value in (None, "") else parse_duration(str(value))


def _web_provider(web: dict[str, Any]) -> WebProvider:
    oauth_spec = (web.get("authentication") or {}).get("oauth2")
    oauth = None
    if oauth_spec:
        oauth = OAuth2(
            token_url=str(oauth_spec.get("tokenUrl", "")),
            client_id=str(oauth_spec.get("clientId", "")),
            client_secret=str(oauth_spec.get("clientSecret", "")),
            scopes=[str(scope) for scope in oauth_spec.get("scopes") or []],
        )
    return WebProvider(
        url=str(web.get("url", "")),
        method=str(web.get("method") or "GET"),
        headers=[
            (str(h.get("key", "")), str(h.get("value", ""))) for h in web.get("headers") or []
        ],
        body=str(web.get("body") or ""),
        json_body=web.get("jsonBody"),
        json_path=str(web.get("jsonPath") or ""),
        timeout_seconds=_int_or_string(web.get("timeoutSeconds"), 0),
        insecure=bool(web.get("insecure", False)),
        oauth2=oauth,
    )


def load_template(yaml_text: str, args: dict[str, str]) -> list[Metric]:
    """Web metrics of an AnalysisTemplate / ClusterAnalysisTemplate with args substituted.

    `args` plays the Rollout's analysis args and overrides the template's `args[].value`; args
    fed from a Secret (valueFrom.secretKeyRef) or from the Rollout (podTemplateHashValue, fieldRef)
    must be given here. Raises TemplateError where Argo would mark the AnalysisRun Error.
    """
    documents = [doc for doc in yaml.safe_load_all(yaml_text) if isinstance(doc, dict)]
    templates = [
        doc
        for doc in documents
        if doc.get("apiVersion") == "argoproj.io/v1alpha1"
        and doc.get("kind") in ("AnalysisTemplate", "ClusterAnalysisTemplate")
    ]
    if not templates:
        raise TemplateError("no argoproj.io/v1alpha1 AnalysisTemplate in the YAML")
    spec = templates[0].get("spec") or {}
    values = _resolve_args(spec.get("args") or [], args)
    metrics: list[Metric] = []
    for raw_metric in spec.get("metrics") or []:
        resolved = _substitute_all(raw_metric, values)
        provider = resolved.get("provider") or {}
        if "web" not in provider:
            continue
        metric = Metric(
            name=str(resolved.get("name", "")),
            web=_web_provider(provider["web"] or {}),
            success_condition=str(resolved.get("successCondition") or ""),
            failure_condition=str(resolved.get("failureCondition") or ""),
            interval=_optional_duration(resolved.get("interval")),
            initial_delay=_optional_duration(resolved.get("initialDelay")),
            count=_int_or_string(resolved.get("count"), 0) or None,
            failure_limit=_int_or_string(resolved.get("failureLimit"), 0),
            inconclusive_limit=_int_or_string(resolved.get("inconclusiveLimit"), 0),
            consecutive_error_limit=_int_or_string(
                resolved.get("consecutiveErrorLimit"), DEFAULT_CONSECUTIVE_ERROR_LIMIT
            ),
            consecutive_success_limit=_int_or_string(resolved.get("consecutiveSuccessLimit"), 0),
        )
        problem = validate_metric(metric)
        if problem:
            raise TemplateError(f"metric {metric.name!r}: {problem}")
        metrics.append(metric)
    return metrics
