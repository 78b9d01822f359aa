"""Render the modelserve Helm chart without helm (a stand-in for ``helm template``).

The chart's templates use a small, deliberate subset of Helm's Go templates, and this file
implements exactly that subset, failing loudly on anything else, so that the tests can render
the chart on a machine with no helm binary and validate every manifest. Helm itself renders
the same templates unchanged (``helm template`` / ``helm install``).

Subset: ``{{ pipeline }}`` with ``{{-``/``-}}`` trimming and ``{{/* comments */}}``;
``if``/``else if``/``else``/``with``/``define``/``end``; ``.``-fields, ``$``, string, number
and boolean literals, parentheses, pipes; the functions in ``FUNCTIONS``. Deliberately
stricter than Helm: printing a missing value (Helm prints nothing) and printing a number of a
million or more (Helm prints it in exponent form, e.g. ``6.5535e+06``) are errors.

    python docker/helm/render.py docker/helm/modelserve [-f values.yaml ...] [--name NAME]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


class TemplateError(Exception):
    """A template the subset cannot render, or that Helm would reject."""


# ---------------------------------------------------------------------------------------------
# Parsing: text and actions -> a tree of nodes.

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)'
    r"|(?P<field>(?:\$|\.)?(?:\.?[A-Za-z_]\w*)+|\$|\.)|(?P<punct>[|()]))"
)


class Text:
    def __init__(self, text: str) -> None:
        self.text = text


class Action:
    def __init__(self, expr: list[Any]) -> None:
        self.expr = expr


class Block:
    """if / with: branches of (keyword, condition, body); a final else has no condition."""

    def __init__(self, keyword: str) -> None:
        self.keyword = keyword
        self.branches: list[tuple[Any, list[Any]]] = []


def _lex(source: str, where: str) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[pos:match.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        items.append(("text", text))
        items.append(("action", match.group(2).strip()))
        trim_next = bool(match.group(3))
        pos = match.end()
    text = source[pos:]
    items.append(("text", text.lstrip(" \t\r\n") if trim_next else text))
    if "{{" in text or "}}" in text:
        raise TemplateError(f"{where}: unbalanced braces")
    return items


def _parse_expr(source: str, where: str) -> list[Any]:
    """A pipeline as nested lists: ["pipe", command, ...]; command: ["cmd", operand, ...];
    operand: ("str", s) | ("num", n) | ("bool", b) | ("field", root, [names]) | ("fn", name)
    | a parenthesised pipeline."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(source):
        if source[pos:].strip() == "":
            break
        match = _TOKEN.match(source, pos)
        if not match:
            raise TemplateError(f"{where}: cannot parse {source[pos:]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()

    def pipeline(i: int) -> tuple[list[Any], int]:
        commands: list[Any] = []
        command: list[Any] = ["cmd"]
        while i < len(tokens):
            kind, value = tokens[i]
            if kind == "punct" and value == ")":
                break
            i += 1
            if kind == "punct" and value == "|":
                commands.append(command)
                command = ["cmd"]
            elif kind == "punct" and value == "(":
                inner, i = pipeline(i)
                if i >= len(tokens) or tokens[i][1] != ")":
                    raise TemplateError(f"{where}: missing ')'")
                i += 1
                command.append(inner)
            elif kind == "str":
                command.append(("str", _go_string(value, where)))
            elif kind == "raw":
                command.append(("str", value[1:-1]))
            elif kind == "num":
                command.append(("num", float(value) if "." in value else int(value)))
            elif value in ("true", "false"):
                command.append(("bool", value == "true"))
            elif value[0] in "$.":
                root = "$" if value.startswith("$") else "."
                names = [n for n in value.lstrip("$").split(".") if n]
                command.append(("field", root, names))
            else:
                command.append(("fn", value))
        commands.append(command)
        if any(len(c) == 1 for c in commands):
            raise TemplateError(f"{where}: empty command in {source!r}")
        return ["pipe", *commands], i

    expr, end = pipeline(0)
    if end != len(tokens):
        raise TemplateError(f"{where}: unexpected ')' in {source!r}")
    return expr


def _go_string(literal: str, where: str) -> str:
    try:
        return json.loads(literal)
    except json.JSONDecodeError:
        raise TemplateError(f"{where}: unsupported string literal {literal}") from None


def parse(source: str, where: str, defines: dict[str, list[Any]]) -> list[Any]:
    """Parse a template; ``define`` blocks go into ``defines``."""
    root: list[Any] = []
    stack: list[tuple[str, Any, list[Any]]] = [("root", None, root)]  # (kind, node, body)
    for kind, value in _lex(source, where):
        body = stack[-1][2]
        if kind == "text":
            if value:
                body.append(Text(value))
            continue
        if value.startswith("/*"):
            if not value.endswith("*/"):
                raise TemplateError(f"{where}: unterminated comment")
            continue
        word, _, rest = value.partition(" ")
        rest = rest.strip()
        if word in ("if", "with"):
            block = Block(word)
            block.branches.append((_parse_expr(rest, where), []))
            body.append(block)
            stack.append((word, block, block.branches[-1][1]))
        elif word == "else":
            top_kind, block, _ = stack[-1]
            if top_kind not in ("if", "with") or block.branches[-1][0] is None:
                raise TemplateError(f"{where}: else outside if/with")
            if rest.startswith("if "):
                if top_kind != "if":
                    raise TemplateError(f"{where}: 'else if' inside with")
                condition = _parse_expr(rest[3:], where)
            elif rest:
                raise TemplateError(f"{where}: unsupported else clause {value!r}")
            else:
                condition = None
            block.branches.append((condition, []))
            stack[-1] = (top_kind, block, block.branches[-1][1])
        elif word == "define":
            name = _go_string(rest, where)
            defines[name] = []
            stack.append(("define", name, defines[name]))
        elif word == "end":
            if len(stack) == 1:
                raise TemplateError(f"{where}: end without a block")
            stack.pop()
        elif word in ("range", "template", "block", "break", "continue") or ":=" in value:
            raise TemplateError(f"{where}: {word!r} is outside the supported subset")
        else:
            body.append(Action(_parse_expr(value, where)))
    if len(stack) != 1:
        raise TemplateError(f"{where}: {stack[-1][0]} without end")
    return root


# ---------------------------------------------------------------------------------------------
# Evaluation.

def truth(value: Any) -> bool:
    """Go templates' truth: false, 0, nil and empty strings, lists and maps are false."""
    if value is None:
        return False
    if isinstance(value, (bool, int, float)):
        return bool(value)
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    return True


def to_text(value: Any, where: str = "") -> str:
    if value is None:
        raise TemplateError(f"{where}: printing a missing value (Helm would print nothing)")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if abs(value) >= 1e6:
            raise TemplateError(f"{where}: Helm prints {value} in exponent form; quote it in "
                                "values.yaml or use toYaml")
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)
    if isinstance(value, str):
        return value
    raise TemplateError(f"{where}: cannot print a {type(value).__name__}; use toYaml")


def _to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    text = yaml.safe_dump(value, default_flow_style=False, sort_keys=True, allow_unicode=True,
                          width=1 << 30)
    if text.endswith("\n...\n"):  # a plain scalar document
        text = text[:-4]
    return text[:-1] if text.endswith("\n") else text


def _to_json(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _indent(width: int, text: str) -> str:
    pad = " " * width
    return pad + text.replace("\n", "\n" + pad)


def _trunc(length: int, text: str) -> str:
    return text[:length] if length >= 0 else text[length:]


def _printf(fmt: str, *args: Any) -> str:
    values = iter(args)

    def one(match: re.Match[str]) -> str:
        verb = match.group(1)
        if verb == "%":
            return "%"
        return to_text(next(values), "printf")

    return re.sub(r"%([sdv%])", one, fmt)


def _required(message: str, value: Any) -> Any:
    if value is None or value == "":
        raise TemplateError(f"required: {message}")
    return value


def _and(*args: Any) -> Any:
    for arg in args:
        if not truth(arg):
            return arg
    return args[-1]


def _or(*args: Any) -> Any:
    for arg in args:
        if truth(arg):
            return arg
    return args[-1]


def _quote(*args: Any) -> str:
    return " ".join(json.dumps(to_text(a, "quote"), ensure_ascii=False)
                    for a in args if a is not None)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "toYaml": _to_yaml,
    "toJson": _to_json,
    "indent": _indent,
    "nindent": lambda width, text: "\n" + _indent(width, text),
    "quote": _quote,
    "default": lambda fallback, value=None: value if truth(value) else fallback,
    "trunc": _trunc,
    "trimSuffix": lambda suffix, text: text[:-len(suffix)] if suffix and
    text.endswith(suffix) else text,
    "replace": lambda old, new, text: text.replace(old, new),
    "contains": lambda needle, text: needle in text,
    "printf": _printf,
    "sha256sum": lambda text: hashlib.sha256(text.encode()).hexdigest(),
    "required": _required,
    "empty": lambda value: not truth(value),
    "not": lambda value: not truth(value),
    "and": _and,
    "or": _or,
    "eq": lambda a, *others: any(a == b for b in others),
    "ne": lambda a, b: a != b,
}


class Renderer:
    def __init__(self, defines: dict[str, list[Any]], root: dict[str, Any]) -> None:
        self.defines = defines
        self.root = root

    def render(self, nodes: list[Any], dot: Any, where: str) -> str:
        out: list[str] = []
        for node in nodes:
            if isinstance(node, Text):
                out.append(node.text)
            elif isinstance(node, Action):
                out.append(to_text(self.eval(node.expr, dot, where), where))
            else:
                for condition, body in node.branches:
                    if condition is None:
                        out.append(self.render(body, dot, where))
                        break
                    value = self.eval(condition, dot, where)
                    if truth(value):
                        inner = value if node.keyword == "with" else dot
                        out.append(self.render(body, inner, where))
                        break
        return "".join(out)

    def eval(self, expr: list[Any], dot: Any, where: str) -> Any:
        result: Any = None
        for n, command in enumerate(expr[1:]):
            operands = command[1:]
            head = operands[0]
            piped = [result] if n > 0 else []
            if isinstance(head, tuple) and head[0] == "fn":
                name = head[1]
                args = [self.operand(o, dot, where) for o in operands[1:]] + piped
                if name == "include":
                    if len(args) != 2:
                        raise TemplateError(f"{where}: include takes a name and a context")
                    result = self.include(args[0], args[1], where)
                elif name in FUNCTIONS:
                    try:
                        result = FUNCTIONS[name](*args)
                    except TypeError as exc:
                        raise TemplateError(f"{where}: {name}: {exc}") from None
                else:
                    raise TemplateError(f"{where}: function {name!r} is outside the subset")
            else:
                if len(operands) != 1 or piped:
                    raise TemplateError(f"{where}: cannot call a value")
                result = self.operand(head, dot, where)
        return result

    def operand(self, operand: Any, dot: Any, where: str) -> Any:
        if isinstance(operand, list):
            return self.eval(operand, dot, where)
        kind = operand[0]
        if kind in ("str", "num", "bool"):
            return operand[1]
        if kind == "fn":
            if operand[1] in FUNCTIONS and operand[1] not in ("include",):
                return FUNCTIONS[operand[1]]()
            raise TemplateError(f"{where}: {operand[1]!r} needs arguments")
        _, root, names = operand
        value = self.root if root == "$" else dot
        walked = root
        for name in names:
            if value is None:
                raise TemplateError(f"{where}: nil pointer evaluating {walked}.{name}")
            if not isinstance(value, dict):
                raise TemplateError(f"{where}: {walked} is not a map")
            value = value.get(name)
            walked = f"{walked}.{name}" if walked != "." else f".{name}"
        return value

    def include(self, name: str, dot: Any, where: str) -> str:
        if name not in self.defines:
            raise TemplateError(f"{where}: no template named {name!r}")
        return self.render(self.defines[name], dot, f"{where} > {name}")


# ---------------------------------------------------------------------------------------------
# The chart.

def merge(base: Any, override: Any) -> Any:
    """Helm's coalescing of values: maps merge deeply, anything else replaces; null deletes."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = merge(base.get(key), value)
        return merged
    return override


def render_chart(chart_dir: Path | str, values: dict[str, Any] | None = None,
                 release: str = "modelserve", namespace: str = "default") -> dict[str, str]:
    """Every rendered template: {path relative to the chart: text}, as ``helm template``."""
    chart_dir = Path(chart_dir)
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text()) or {}
    root = {
        "Values": merge(defaults, values or {}),
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm",
                    "IsInstall": True, "IsUpgrade": False, "Revision": 1},
        "Chart": {"Name": chart["name"], "Version": chart["version"],
                  "AppVersion": chart.get("appVersion", "")},
        "Capabilities": {"KubeVersion": {"Version": "v1.30.0"}},
    }
    defines: dict[str, list[Any]] = {}
    parsed: dict[str, list[Any]] = {}
    for path in sorted((chart_dir / "templates").iterdir()):
        where = f"{chart['name']}/templates/{path.name}"
        nodes = parse(path.read_text(), where, defines)
        if not path.name.startswith("_") and path.suffix in (".yaml", ".yml"):
            parsed[where] = nodes
    renderer = Renderer(defines, root)
    out: dict[str, str] = {}
    for where, nodes in parsed.items():
        root["Template"] = {"Name": where, "BasePath": f"{chart['name']}/templates"}
        out[where] = renderer.render(nodes, root, where)
    return out


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects in rendered templates (empty documents dropped)."""
    objects: list[dict[str, Any]] = []
    for where, text in rendered.items():
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise TemplateError(f"{where}: rendered YAML does not parse: {exc}") from None
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise TemplateError(f"{where}: a document is not a mapping")
            objects.append(doc)
    return objects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chart", type=Path)
    parser.add_argument("-f", "--values", type=Path, action="append", default=[])
    parser.add_argument("--name", default="modelserve", help="release name")
    parser.add_argument("--namespace", default="default")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for path in args.values:
        values = merge(values, yaml.safe_load(path.read_text()) or {})
    try:
        rendered = render_chart(args.chart, values, args.name, args.namespace)
        manifests(rendered)
    except TemplateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for where, text in rendered.items():
        if text.strip():
            sys.stdout.write(f"---\n# Source: {where}\n{text.strip()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
