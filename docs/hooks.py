"""MkDocs hooks (mkdocs.yml ``hooks:``): what the pages take from the code and the repository.

- **Generated tables.** A page line ``<!-- generated: NAME -->`` is replaced by the table
  ``TABLES[NAME]`` renders from the code: the server's settings (``modelserve.config.Settings``,
  each field's type, bounds, default and description, with the TorchServe config.properties
  key that sets it), a model's model-config.yaml keys (``ModelConfig``, by alias) and the
  config.properties keys that set nothing here (``modelserve.ts_unmapped``). A setting added to
  the code appears in the manual at the next build; tests/unit/test_docs_reference.py checks
  that every field does.
- **Bar charts.** ``<!-- bar-chart: column=N title="..." -->`` before a Markdown table adds an
  inline SVG drawn from that table (label: the first column; length: the first number in
  column N; the cell's text is printed on the bar), so a picture never disagrees with the
  numbers beside it.
- **Repository files.** Pages link to ``../bench/RESULTS.md`` and ``../docker/README.md``
  (links that work on GitHub); the site gets a page made from each (``REPO_PAGES``) and the
  links are pointed at it. Any other link that leaves docs/ fails the build.
- **Snippets** (``--8<-- "examples/..."``) resolve against docs/ wherever mkdocs runs.

Only the standard library, PyYAML and modelserve are imported at module level, so the unit
tests can render the tables without MkDocs.
"""

from __future__ import annotations

import html
import posixpath
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# Repository files outside docs/ that pages link to -> the site page made from each.
REPO_PAGES = {
    "bench/RESULTS.md": "repo/bench/RESULTS.md",
    "docker/README.md": "repo/docker/README.md",
}


# -- generated tables ---------------------------------------------------------------------

def _cell(text: str) -> str:
    """Plain text for a Markdown table cell: no raw HTML, no column breaks."""
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def _bounds(metadata: list[Any]) -> list[str]:
    out = []
    for item in metadata:
        nested = getattr(item, "metadata", None)  # Field(...) inside Annotated[...]
        if isinstance(nested, list):
            out += _bounds(nested)
            continue
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None and type(item).__name__.lower() == attr:
                out.append(f"{sign} {value}")
    return out


def type_text(annotation: Any, metadata: list[Any] = ()) -> str:
    """A field's type as a reader of config.yaml needs it: ``int ≥ 1, ≤ 65535``, ``auto``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_text(args[0], [*args[1:], *metadata])
    if origin in (Union, types.UnionType):  # bounds belong to the parts that are not None
        parts = [type_text(arg, metadata) for arg in args if arg is not type(None)]
        return " or ".join(parts) + (" or `null`" if type(None) in args else "")
    if origin is Literal:
        text = " or ".join(f"`{value}`" for value in args)
    elif origin is not None:  # list[str], dict[str, ...]
        text = "list" if origin is list else "mapping" if origin is dict else origin.__name__
        if origin is list:
            text += f" of {type_text(args[0])}s"
    elif annotation is Path:
        text = "path"
    elif hasattr(annotation, "model_fields"):  # a section of settings (autoscale)
        text = "mapping"
    else:
        text = {"str": "string", "bool": "`true` or `false`"}.get(annotation.__name__,
                                                                    annotation.__name__)
    bounds = _bounds(list(metadata))
    return f"{text} {', '.join(bounds)}" if bounds else text


def default_text(value: Any) -> str:
    """A default as config.yaml writes it."""
    if isinstance(value, Path):
        value = str(value)
    if hasattr(value, "model_dump"):  # a section of settings (autoscale)
        value = value.model_dump()
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return f"`{text.removesuffix('...').strip()}`"


def ts_keys_by_setting() -> dict[str, list[str]]:
    """Settings field -> the config.properties keys that set it."""
    from modelserve import ts_config

    keys: dict[str, list[str]] = {}
    for ts_key, (setting, _) in ts_config._MAPPED.items():
        keys.setdefault(setting, []).append(ts_key)
    for ts_key, setting in ts_config._PORT_FIELDS.items():
        keys.setdefault(setting, []).append(ts_key)
    keys.setdefault("host", []).append("inference_address")
    # an https:// address, and enable_grpc_ssl, choose the TLS listeners
    keys.setdefault("tls_listeners", []).extend([*ts_config._PORT_FIELDS,
                                                 *sorted(ts_config._TLS_SWITCHES)])
    return keys


def settings_table() -> str:
    from modelserve.config import Settings

    ts_keys = ts_keys_by_setting()
    rows = ["| key | type | default | what it does |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        what = _cell(field.description or "")
        if name in ts_keys:
            what += " config.properties: " + ", ".join(f"`{k}`" for k in ts_keys[name]) + "."
        rows.append(f"| `{name}` | {type_text(field.annotation, field.metadata)} | "
                    f"{default_text(default)} | {what} |")
    return "\n".join(rows)


# ModelConfig's fields carry no descriptions of their own: a field named like a server
# setting is described by it (and defaults to it); the others are described here.
MODEL_CONFIG_NOTES = {
    "min_workers": ("default_workers_per_model", "Worker processes started for the model "
                    "version, and kept (scaling never goes below)."),
    "max_workers": ("default_workers_per_model", "Most worker processes for the model "
                    "version; raised to minWorkers when lower."),
    "device_type": (None, "cpu: never a GPU; gpu or unset: worker i on cuda:(i mod n) when "
                    "a GPU is present, else the CPU."),
    "sequence_batching": (None, "Stateful model: each sequence's requests go to one worker, "
                          "one at a time, in order (with a positive sequenceMaxIdleMSec; "
                          "[Sequence batching](batching.md#sequence-batching-stateful-models))."),
    "sequence_max_idle_ms": (None, "A sequence closes after waiting this long for its next "
                             "request; 0: no sequence batching."),
    "sequence_timeout_ms": (None, "A sequence closes once this long after it opened, when "
                            "nothing of it is queued; 0: never."),
    "max_num_sequence": (None, "Sequences open at once, at least batchSize x maxWorkers; "
                         "a new one past it is 503."),
    "max_sequence_job_queue_size": (None, "Requests of one sequence waiting at once; one "
                                    "more is 503."),
    "continuous_batching": (None, "A batch runs step by step, new requests joining between "
                            "steps; an answer with ts_stream_next: true is one chunk "
                            "([Continuous batching](batching.md#continuous-batching))."),
}


def model_config_table() -> str:
    from modelserve.config import ModelConfig, Settings

    rows = ["| model-config.yaml key | type | default | what it does |", "|---|---|---|---|"]
    for name, field in ModelConfig.model_fields.items():
        setting, note = MODEL_CONFIG_NOTES.get(name, (name, None))
        if note is None:
            note = Settings.model_fields[name].description or ""
        default = (f"the server's `{setting}`" if setting in Settings.model_fields
                   else default_text(field.get_default()))
        rows.append(f"| `{field.alias or name}` | {type_text(field.annotation, field.metadata)}"
                    f" | {default} | {_cell(note)} |")
    return "\n".join(rows)


# A rule's test for "harmless" (modelserve.ts_unmapped) -> the verdict it gives.
VERDICTS = {
    "_always": "ignored",
    "_never": "not supported",
    "_when_false": "ignored if `false`, else not supported",
    "java_bool": "ignored if `true`, else not supported",
    "_when_empty": "ignored if empty, else not supported",
    "_when_prometheus": "ignored if `prometheus`, else not supported",
}


def ts_unmapped_table() -> str:
    """config.properties keys with no setting here, with the warning's own words."""
    from modelserve.ts_unmapped import IGNORED

    rows = ["| config.properties key | verdict | why (the warning's text) |", "|---|---|---|"]
    for key, rule in IGNORED.items():
        verdict = VERDICTS.get(getattr(rule.harmless, "__name__", ""), "depends on the value")
        rows.append(f"| `{key}` | {verdict} | {_cell(rule.note)} |")
    return "\n".join(rows)


TABLES = {
    "settings": settings_table,
    "model-config": model_config_table,
    "ts-unmapped": ts_unmapped_table,
}
_GENERATED = re.compile(r"^<!-- generated: ([\w-]+) -->$", re.MULTILINE)


def render_generated(markdown: str) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in TABLES:
            raise ValueError(f"unknown generated table {name!r} (known: {sorted(TABLES)})")
        return TABLES[name]()

    return _GENERATED.sub(one, markdown)


# -- bar charts -----------------------------------------------------------------------------

_CHART = re.compile(r"^<!-- bar-chart: (.*?) -->\n((?:\|.*\n?)+)", re.MULTILINE)
_OPTION = re.compile(r'(\w+)=(?:"([^"]*)"|(\S+))')
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*")


def _plain(cell: str) -> str:
    """A table cell's text: links become their text, emphasis and code marks go."""
    return re.sub(r"[*`]", "", re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", cell)).strip()


def bar_chart_svg(title: str, bars: list[tuple[str, float, str]], reference: float | None) -> str:
    """A horizontal bar chart: (label, length, text on the bar); an optional reference line."""
    # Text widths are estimated (~6.6 px per character at 12 px); the SVG scales to the page.
    label_w = int(max(len(label) for label, _, _ in bars) * 6.6) + 12
    text_w = int(max(len(text) for _, _, text in bars) * 6.6) + 12
    bar_w, row_h, top = 360, 26, 30
    width, height = label_w + bar_w + text_w, top + row_h * len(bars) + 10
    peak = max([value for _, value, _ in bars] + [reference or 0]) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" style="max-width:{width}px" role="img" aria-label="{html.escape(title)}">',
        f'<text x="2" y="18" font-size="14" font-weight="bold" fill="currentColor">'
        f'{html.escape(title)}</text>',
    ]
    for i, (label, value, text) in enumerate(bars):
        y = top + i * row_h
        length = max(1.0, bar_w * value / peak)
        parts += [
            f'<text x="{label_w - 8}" y="{y + 17}" font-size="12" text-anchor="end" '
            f'fill="currentColor">{html.escape(label)}</text>',
            f'<rect x="{label_w}" y="{y + 4}" width="{length:.1f}" height="{row_h - 8}" '
            f'fill="#5c6bc0" rx="2"/>',
            f'<text x="{label_w + length + 4:.1f}" y="{y + 17}" font-size="12" '
            f'fill="currentColor">{html.escape(text)}</text>',
        ]
    if reference is not None:
        x = label_w + bar_w * reference / peak
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - 6}" '
                     f'stroke="#e53935" stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    return "".join(parts)


def render_charts(markdown: str) -> str:
    def one(match: re.Match[str]) -> str:
        options = {k: a if a else b for k, a, b in _OPTION.findall(match.group(1))}
        table = match.group(2)
        column = int(options["column"])
        bars = []
        for line in table.strip().splitlines()[2:]:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            text = _plain(cells[column])
            number = _NUMBER.search(text)
            if number is None:
                raise ValueError(f"bar chart {options.get('title')!r}: no number in {text!r}")
            bars.append((_plain(cells[0]), float(number.group().replace(",", "")), text))
        reference = float(options["reference"]) if "reference" in options else None
        svg = bar_chart_svg(options.get("title", ""), bars, reference)
        return f"{table.rstrip()}\n\n<div class=\"bar-chart\">{svg}</div>\n\n"

    return _CHART.sub(one, markdown)


# -- links to repository files outside docs/ --------------------------------------------------

_LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\))")


def rewrite_repo_links(markdown: str, page_src: str) -> str:
    """``../bench/RESULTS.md`` (from ``page_src``, a path inside docs/) -> the site's page
    made from it; any other relative link out of docs/ is an error."""
    here = posixpath.dirname(page_src)

    def one(match: re.Match[str]) -> str:
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return match.group(0)  # a URL, mailto: or absolute path: not ours to check
        resolved = posixpath.normpath(posixpath.join("docs", here, target))
        if not resolved.startswith("../") and resolved.startswith("docs/"):
            return match.group(0)  # inside docs/: MkDocs checks it
        if resolved not in REPO_PAGES:
            raise ValueError(f"{page_src}: link {target!r} leaves docs/ (only "
                             f"{sorted(REPO_PAGES)} have a page in the site)")
        new = posixpath.relpath(REPO_PAGES[resolved], here or ".")
        return f"{match.group(1)}{new}{match.group(3) or ''}{match.group(4)}"

    return _LINK.sub(one, markdown)


# -- MkDocs events --------------------------------------------------------------------------

def on_config(config: Any) -> Any:
    snippets = config.mdx_configs.setdefault("pymdownx.snippets", {})
    snippets["base_path"] = [str(DOCS)]
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for source, page in REPO_PAGES.items():
        files.append(File.generated(config, page, abs_src_path=str(ROOT / source)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri in REPO_PAGES.values():
        return markdown  # a repository file shown as it is
    markdown = render_generated(markdown)
    markdown = render_charts(markdown)
    return rewrite_repo_links(markdown, page.file.src_uri)
