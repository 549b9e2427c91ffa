"""Sphinx directive ``lcstack-config-reference``: the run config's keys, generated from the pydantic schema.

The table is built at documentation build time from :class:`lcstack.config.RunConfig` and the models it
nests, so it cannot drift from the code: a key added to the schema appears here on the next build. The
description of a key is its ``Field(description=...)``, else its ``#:`` comment in the source, else the
entry of the model's numpydoc ``Parameters`` section, else, for a required key, what load_config says when
it is missing.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterator

from docutils import nodes
from docutils.statemachine import StringList
from numpydoc.docscrape import NumpyDocString
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective

#: fields of RunConfig that load_config fills itself (not keys of the YAML file)
INTERNAL = {"source", "stac_source"}


def _models(annotation: object) -> list[type[BaseModel]]:
    """Return the pydantic models inside an annotation (``X | None``, ``tuple | AoiBox | Path``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out.extend(_models(arg))
    return out


def _type_name(annotation: object) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    text = repr(annotation).replace("typing.", "").replace("pathlib.", "")
    for name in ("lcstack.config.", "lcstack.signing."):
        text = text.replace(name, "")
    return text


def _default(field: object) -> str:
    if field.is_required():  # type: ignore[attr-defined]
        return "required"
    if field.default_factory is not None:  # type: ignore[attr-defined]
        value = field.default_factory()  # type: ignore[attr-defined]
        return "see below" if isinstance(value, BaseModel) else f"``{value!r}``"
    value = field.default  # type: ignore[attr-defined]
    return "" if value is PydanticUndefined else f"``{value!r}``"


def _docs(model: type[BaseModel]) -> dict[str, str]:
    """Per-field text from ``#:`` comments and the class's numpydoc Parameters/Attributes sections."""
    out: dict[str, str] = {}
    doc = NumpyDocString(inspect.getdoc(model) or "")
    for section in ("Parameters", "Attributes"):
        for param in doc[section]:
            for name in param.name.split(","):
                out[name.strip()] = " ".join(param.desc)
    analyzer = ModuleAnalyzer.for_module(model.__module__)
    for (cls, attr), lines in analyzer.find_attr_docs().items():
        if cls == model.__name__:
            out[attr] = " ".join(line.strip() for line in lines if line.strip())
    return out


def walk(
    model: type[BaseModel], prefix: str = "", required: dict[str, str] | None = None
) -> Iterator[tuple[str, str, str, str]]:
    """Yield ``(key, type, default, description)`` for every key of ``model`` and the models it nests."""
    docs = _docs(model)
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        if not prefix and name in INTERNAL:
            continue
        key = prefix + name
        text = field.description or docs.get(name) or (required or {}).get(name, "")
        yield key, _type_name(field.annotation), _default(field), text
        nested.extend((key, sub) for sub in _models(field.annotation))
    if not prefix:  # ``stac:`` may also be a mapping (lcstack.signing.StacSource)
        from lcstack.signing import StacSource

        nested.insert(0, ("stac", StacSource))
    for key, sub in nested:
        yield from walk(sub, key + ".")


def _cell(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|") or " "


class ConfigReference(SphinxDirective):
    """Render the table of config keys."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        """Build the list-table as reStructuredText and parse it."""
        from lcstack.config import _REQUIRED, RunConfig

        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 22 22 14 42",
            "   :class: lcstack-config",
            "",
            "   * - key",
            "     - type",
            "     - default",
            "     - meaning",
        ]
        for key, type_, default, text in walk(RunConfig, required=_REQUIRED):
            lines += [
                f"   * - ``{key}``",
                f"     - ``{_cell(type_)}``",
                f"     - {_cell(default)}",
                f"     - {_cell(text)}",
            ]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="lcstack.config"), self.content_offset, container)
        return container.children


def setup(app: object) -> dict[str, object]:
    """Register the directive."""
    app.add_directive("lcstack-config-reference", ConfigReference)  # type: ignore[attr-defined]
    return {"parallel_read_safe": True, "parallel_write_safe": True}
