"""A griffe extension for docs/api.md: the Sphinx markup in the docstrings becomes Markdown mkdocstrings renders.

Loaded by the mkdocstrings handler (docs/mkdocs.yml, ``extensions``). The docstrings are Google style with a few
reST constructs, which Markdown would show as typed:

* ``.. math::`` blocks (the formula on the directive line or indented under it) become MathML with
  latex2mathml, as docs/gen_site.py does for the pages, so nothing is fetched to view them;
* ``:math:`tex``` becomes inline MathML;
* ``:class:`name``` and the other cross-reference roles become code (``~a.b.c`` shows ``c``, as in Sphinx).

A formula latex2mathml cannot read is left as a ``latex`` code block rather than failing the build.
"""

from __future__ import annotations

import re
from typing import Any

import griffe
from latex2mathml.converter import convert

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")
_INLINE_MATH = re.compile(r":math:`([^`]+)`")
_DIRECTIVE = re.compile(r"^( *)\.\. math::(.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _math_block(indent: str, tex: str) -> list[str]:
    try:
        body = [indent + f'<div class="math">{convert(tex, display="block")}</div>']
    except Exception:
        body = [indent + "```latex", *(indent + t for t in tex.splitlines()), indent + "```"]
    return ["", *body, ""]


def _blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i])
        if m is None:
            out.append(lines[i])
            i += 1
            continue
        base = len(m.group(1))
        tex = [m.group(2).strip()] if m.group(2).strip() else []
        i += 1
        # The formula: the lines indented under the directive, up to the first blank line after some formula.
        while i < len(lines):
            line = lines[i].strip()
            if line and _indent(lines[i]) > base:
                tex.append(line)
            elif line or tex:
                break
            i += 1
        out += _math_block(m.group(1), "\n".join(tex))
    return "\n".join(out)


def _inline_math(m: re.Match[str]) -> str:
    try:
        return str(convert(m.group(1)))
    except Exception:
        return f"`{m.group(1)}`"


def _role(m: re.Match[str]) -> str:
    name = m.group(2)
    return f"`{name.rsplit('.', 1)[-1] if m.group(1) else name}`"


def to_markdown(text: str) -> str:
    """The docstring ``text`` with its reST math and roles turned into Markdown and MathML."""
    return _ROLE.sub(_role, _INLINE_MATH.sub(_inline_math, _blocks(text)))


class SphinxMarkup(griffe.Extension):
    """Rewrite every docstring once the object tree is built, before mkdocstrings parses it."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
