"""`/ui/`: the one page, its static files, and the login form that sets the session cookie."""

from __future__ import annotations

import html
from importlib.resources import files
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ingest.ui.access import COOKIE, Gate

STATIC = ("app.js", "app.css")
_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8",
          "html": "text/html; charset=utf-8"}
MAX_FORM_BYTES = 4096
# Everything the page loads is its own: no other origin, no inline script, no framing.
_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                       "frame-ancestors 'none'; form-action 'self'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store"}
LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>holysheep-ingest: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/ui/static/app.css"></head>
<body class="login"><form method="post" action="/ui/login">
<h1>holysheep-ingest</h1><p>This dashboard needs its token (INGEST_UI_TOKEN).</p>
{notice}<label>Token <input type="password" name="token" autocomplete="current-password"
autofocus required></label> <button type="submit">Log in</button></form></body></html>
"""


def _asset(name: str) -> bytes:
    return files("ingest.ui").joinpath("static", name).read_bytes()


def _page(body: bytes | str, status: int = 200, kind: str = "html") -> Response:
    return Response(body, status_code=status, media_type=_TYPES[kind], headers=_HEADERS)


def _login(notice: str = "", status: int = 200) -> Response:
    shown = f'<p class="notice">{html.escape(notice)}</p>' if notice else ""
    return _page(LOGIN.format(notice=shown), status)


def build_router(gate: Gate, secure_cookie: bool) -> APIRouter:
    router = APIRouter()
    # Read once: the package's files do not change under a running receiver.
    assets = {name: _asset(name) for name in (*STATIC, "index.html")}

    def allowed(request: Request) -> bool:
        return gate.allows(request.headers.get("authorization"), request.cookies.get(COOKIE))

    @router.get("/ui", include_in_schema=False)
    async def ui_bare() -> Response:
        return RedirectResponse("/ui/", status_code=308)

    @router.get("/ui/", include_in_schema=False)
    async def index(request: Request) -> Response:
        if not allowed(request):
            return RedirectResponse("/ui/login", status_code=303)
        return _page(assets["index.html"])

    @router.get("/ui/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:  # a fixed list: no path from the request reaches the disk
            return _page("not found", 404)
        return _page(assets[name], kind=name.rsplit(".", 1)[1])

    @router.get("/ui/login", include_in_schema=False)
    async def login_form(request: Request) -> Response:
        if gate.open:
            return RedirectResponse("/ui/", status_code=303)
        return _login()

    @router.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if gate.open or gate.session is None:
            return RedirectResponse("/ui/", status_code=303)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return _login("That form is too large.", 413)
        given = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
        if not gate.token_matches(given.strip()):
            return _login("That is not the token.", 401)
        response = RedirectResponse("/ui/", status_code=303)
        response.set_cookie(COOKIE, gate.session, httponly=True, samesite="strict",
                            secure=secure_cookie, path="/")
        return response

    @router.post("/ui/logout", include_in_schema=False)
    async def logout() -> Response:
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                               secure=secure_cookie)
        return response

    return router
