"""Example extension: an API route and a setting.

``GET /example/hello`` answers ``{"greeting": "<example_greeting>, <name>!"}``; the greeting is an
option (``example_greeting``, shown in the Settings tab, settable with ``POST /sdapi/v1/options``).
Shows: ``register_settings``, ``api_routes``.
"""

from __future__ import annotations

from webui.hookspecs import hookimpl
from webui.settings import OptionDef


@hookimpl
def register_settings():
    return [OptionDef("example_greeting", "Hello", "Greeting of the example API route", "Example extension",
                      help="What GET /example/hello answers with.")]


@hookimpl
def api_routes(router, ctx):
    @router.get("/example/hello", tags=["example"])
    def hello(name: str = "world") -> dict:
        return {"greeting": f"{ctx.options.current.get('example_greeting', 'Hello')}, {name}!"}
