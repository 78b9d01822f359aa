"""The manual's generated parts (docs/hooks.py, run by MkDocs at build time): the configuration
tables name every setting the code has, the benchmark charts are drawn from their tables, and
links out of docs/ go only where the site has a page. Rendered here in-process, without MkDocs.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from modelserve import ts_config, ts_unmapped
from modelserve.config import ModelConfig, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


def rows(table: str) -> dict[str, list[str]]:
    """First cell's `name` -> the row's cells, for a Markdown table."""
    out = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        name = re.fullmatch(r"`([^`]+)`", cells[0])
        assert name, f"row without a `key` first: {line}"
        out[name.group(1)] = cells
    return out


def test_settings_table_names_every_field_with_type_default_and_description():
    table = rows(hooks.settings_table())
    assert list(table) == list(Settings.model_fields)
    for name, (_, type_cell, default, what) in table.items():
        assert type_cell and default.startswith("`"), name
        assert what, f"Settings.{name} has no description (Field(description=...))"


def test_settings_table_shows_bounds_and_defaults_as_config_yaml_writes_them():
    table = rows(hooks.settings_table())
    assert table["inference_port"][1:3] == ["int ≥ 1, ≤ 65535", "`8080`"]
    assert table["batch_threads"][1:3] == ["int ≥ 1, ≤ 64 or `auto`", "`auto`"]
    assert table["threads_per_worker"][1:3] == ["int ≥ 1 or `null`", "`null`"]
    assert table["load_models"][1:3] == ["list of strings", "`[]`"]
    assert table["model_store"][2] == "`model_store`"
    assert "&lt;workdir&gt;" in table["key_file"][3]  # no raw HTML from a description


def test_settings_table_names_every_config_properties_key_that_sets_something():
    text = hooks.settings_table()
    for key in [*ts_config._MAPPED, *ts_config._PORT_FIELDS]:
        assert f"`{key}`" in text, f"config.properties key {key} missing"
    table = rows(text)
    for key, (setting, _) in ts_config._MAPPED.items():
        assert f"`{key}`" in table[setting][3]


def test_model_config_table_names_every_key_by_its_alias():
    table = rows(hooks.model_config_table())
    assert list(table) == [f.alias or n for n, f in ModelConfig.model_fields.items()]
    assert all(cells[3] for cells in table.values()), "a model-config.yaml key lacks a note"
    assert table["batchSize"][2] == "the server's `batch_size`"


def test_unmapped_table_lists_every_ignored_key_with_its_warning_text():
    table = rows(hooks.ts_unmapped_table())
    assert list(table) == list(ts_unmapped.IGNORED)
    assert table["python"][1] == "not supported"
    assert table["vmargs"][1] == "ignored"
    assert table["enable_metrics_api"][1].startswith("ignored if `true`")


def test_configuration_page_has_every_marker_and_renders_them_all():
    page = (DOCS / "configuration.md").read_text()
    for name in hooks.TABLES:
        assert f"<!-- generated: {name} -->" in page
    rendered = hooks.render_generated(page)
    assert "<!-- generated:" not in rendered
    with pytest.raises(ValueError, match="unknown generated table"):
        hooks.render_generated("<!-- generated: nope -->")


def test_each_chart_has_a_bar_per_table_row():
    page = (DOCS / "benchmarks.md").read_text()
    markers = page.count("<!-- bar-chart:")
    assert markers >= 2
    rendered = hooks.render_charts(page)
    svgs = re.findall(r"<svg.*?</svg>", rendered)
    assert len(svgs) == markers
    first_table = page.split("<!-- bar-chart:")[1].split("\n\n")[0]
    body_rows = [line for line in first_table.splitlines()[1:] if line.startswith("|")][2:]
    assert svgs[0].count("<rect") == len(body_rows)
    assert "3.02×" in svgs[0] and "](" not in svgs[0]


def test_links_out_of_docs_go_only_to_pages_the_site_has():
    assert hooks.rewrite_repo_links("[r](../bench/RESULTS.md#memory)", "benchmarks.md") == \
        "[r](repo/bench/RESULTS.md#memory)"
    assert hooks.rewrite_repo_links("[d](../../docker/README.md)", "sub/page.md") == \
        "[d](../repo/docker/README.md)"
    for kept in ("[a](apis.md)", "[u](https://example.org/x)", "[s](#section)"):
        assert hooks.rewrite_repo_links(kept, "index.md") == kept
    with pytest.raises(ValueError, match="leaves docs/"):
        hooks.rewrite_repo_links("[c](../modelserve/config.py)", "configuration.md")
    for source in hooks.REPO_PAGES:
        assert (ROOT / source).is_file()
