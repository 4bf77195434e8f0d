"""Point the back-links of the highlighted source pages at the documented objects.

:mod:`sphinx.ext.viewcode` links each object on a ``_modules/...`` page back to the
page that described it last, as ``page#<module>.<name>``. Two cases break that link:

- the last description was written with ``:no-index:`` (the structure pages repeat
  each structure class's docstring beside its module's), which has no anchor;
- the object is described under two names (``structmat.family_member`` on its API
  page and ``structmat.registry.family_member`` on the testing page), and the link
  joins the first name's module with the last page.

Before viewcode writes its pages, this extension sends each back-link to the page
where the Python domain indexes ``<module>.<name>``, the anchor the link names. Links
to objects that the domain does not index are left as viewcode made them.
"""

from __future__ import annotations

from typing import Any

#: Run before viewcode's own ``html-collect-pages`` handler (default priority 500).
PRIORITY = 400


def repoint_backlinks(app: Any) -> list[Any]:
    """Send every viewcode back-link to the page that indexes its object.

    Returns:
        No pages (the ``html-collect-pages`` protocol).
    """
    modules = getattr(app.env, "_viewcode_modules", {})
    objects = app.env.get_domain("py").objects
    for entry in modules.values():
        if not entry:  # modules whose source viewcode could not read
            continue
        _code, _tags, used, refname = entry
        for name in used:
            indexed = objects.get(f"{refname}.{name}")
            if indexed is not None:
                used[name] = indexed.docname
    return []


def setup(app: Any) -> dict[str, Any]:
    """Register the handler; the extension keeps no state of its own."""
    app.setup_extension("sphinx.ext.viewcode")
    app.connect("html-collect-pages", repoint_backlinks, priority=PRIORITY)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
