"""The web dashboard: one HTML page and its static files, served by the job server at `/`.

Everything the page loads comes from this package or from an installed Python package (Plotly's
own `plotly.min.js`), so the dashboard works air-gapped. It reads and writes only through /api/v1.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

STATIC = Path(str(resources.files("service.dashboard") / "static"))
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
NO_CACHE = {"Cache-Control": "no-cache"}  # revalidate: a server upgrade must not leave stale pages behind

router = APIRouter(include_in_schema=False)


def plotly_js() -> Path:
    """Plotly's bundle as the installed `plotly` package ships it (the version pip resolved)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="the installed plotly package lacks plotly.min.js")
    return path


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type=TYPES[".html"], headers=NO_CACHE)


@router.get("/static/vendor/plotly.min.js")
async def vendor_plotly() -> FileResponse:
    return FileResponse(plotly_js(), media_type=TYPES[".js"], headers={"Cache-Control": "max-age=86400"})


@router.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    """Only files this package ships, by bare name: nothing from the request ever becomes a path."""
    files = {p.name: p for p in STATIC.iterdir() if p.is_file() and p.suffix in TYPES}
    if name not in files:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no static file {name!r}")
    return FileResponse(files[name], media_type=TYPES[files[name].suffix], headers=NO_CACHE)
