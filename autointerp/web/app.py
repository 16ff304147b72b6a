"""The catalog web app: search, feature and run pages (Jinja2, autoescaped) and a JSON API.

Requests read through short read-only connections and write reviews in short transactions, so that a
labeling job can write to the same store between them (`autointerp.web.access` says how they take
turns). The search index is kept fresh by a background thread (`autointerp.indexing.IndexKeeper`): a
search never builds it, it uses the last good one. A store held by another process for longer than a
request waits (`lock_wait`) is answered 503 with Retry-After, in pages and in the API: not the client's fault.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import jinja2
import swagger_ui_bundle
from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from autointerp import inventory
from autointerp.catalog import REVIEW_STATES, VERDICTS, FeatureView, feature_view, load_labels, review_label, run_view
from autointerp.errors import AutointerpError, NotFound, StoreBusy
from autointerp.indexing import INTERVAL_SECONDS, IndexKeeper
from autointerp.search import MODES, SearchFilters, SearchIndex, search
from autointerp.store.db import LOCK_WAIT_SECONDS
from autointerp.store.jobs import list_runs
from autointerp.web.access import CatalogAccess
from autointerp.web.reviewers import COOKIE, ReviewAccess, ReviewRefused

HERE = Path(__file__).parent
BUSY_RETRY_AFTER_S = 1  # a job's store sessions start at most once a second and leave the file free between them


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["num"] = lambda x, digits=3: "–" if x is None else f"{x:.{digits}g}"
    env.filters["path"] = lambda s: quote(str(s), safe="")
    return env


def _histogram(view: FeatureView, width: int = 400, height: int = 80) -> list[dict[str, Any]]:
    """SVG bars of the activation histogram (active tokens only), heights scaled to the tallest bin."""
    if view.stats is None or not view.stats.hist_counts:
        return []
    counts, edges = view.stats.hist_counts, view.stats.hist_edges
    top = max(counts) or 1
    bar = width / len(counts)
    return [
        {
            "x": round(i * bar, 2),
            "w": round(bar - 1, 2),
            "h": round(height * c / top, 2),
            "y": round(height - height * c / top, 2),
            "title": f"{edges[i]:.3g} to {edges[i + 1]:.3g}: {c} tokens",
        }
        for i, c in enumerate(counts)
    ]


def _shade_max(view: FeatureView) -> float:
    if view.stats is not None and view.stats.max_value > 0:
        return view.stats.max_value
    return max([c.max_value for c in view.contexts] + [1e-9])


def _filters(
    source: str | None, model: str | None, layer: int | None, min_score: str | None,
    density_min: float | None, density_max: float | None, review: str | None,
) -> SearchFilters:
    return SearchFilters(
        source=source or None, model=model or None, layer=layer, min_score=min_score or None,
        density_min=density_min, density_max=density_max, review=review or None,
    )


def _number(text: str | None, kind: type, name: str):
    if text is None or not text.strip():
        return None
    try:
        return kind(text)
    except ValueError:
        raise AutointerpError(f"the {name} filter wants a number, not {text!r}") from None


def _same_origin(request: Request) -> None:
    """Refuse writes that a page from another site makes the browser send (CSRF)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(status_code=403, detail="cross-site request refused")


def _token(request: Request, form: dict[str, str] | None = None) -> str | None:
    """The reviewer token a request carries: the form's field, `Authorization: Bearer`, or the cookie."""
    if form and form.get("token"):
        return form["token"]
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE)


def create_app(
    db_path: str | Path, *, index_interval: float = INTERVAL_SECONDS, reviewers: ReviewAccess | None = None,
    lock_wait: float = LOCK_WAIT_SECONDS,
) -> FastAPI:
    """The catalog app; `reviewers` says who may write reviews (default: anyone, recorded as "local");
    `index_interval`: seconds between the search index's looks at the store; `lock_wait`: seconds a request
    waits for a store that another process holds before it is answered 503."""
    access = CatalogAccess(db_path, lock_wait=lock_wait)
    keeper = IndexKeeper(db_path, access.reading, interval=index_interval)
    reviewers = reviewers or ReviewAccess()
    env = _templates()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        keeper.start()
        try:
            yield
        finally:
            keeper.stop()
            access.close()

    app = FastAPI(
        lifespan=lifespan,
        title="autointerp catalog",
        description="Search feature labels, read their scores and evidence, and review them.",
        version="1",
        docs_url=None,
        redoc_url=None,
    )
    app.state.access = access
    app.state.index_keeper = keeper
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    # The API docs page's scripts come from the swagger-ui-bundle package, not a CDN: it works offline.
    app.mount("/swagger-ui", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="autointerp catalog API",
            swagger_js_url="/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/swagger-ui/favicon-32x32.png",
        )

    def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(template).render(**context), status_code=status)

    def delete(request: Request, deleting, key) -> dict:
        """A same-origin delete by a reviewer (token, when the catalog has them; never when read-only), in one
        write transaction; the rows deleted per table."""
        _same_origin(request)
        reviewers.reviewer(_token(request))
        with access.writing() as con:
            deleted = deleting(con, key)
        keeper.poke()
        return {"deleted": deleted}

    def run_search(q: str, mode: str, filters: SearchFilters, limit: int, offset: int):
        # an empty query lists features and needs no index: it never waits for the first build
        index = keeper.current() if q.strip() else keeper.index or SearchIndex()
        with access.reading() as con:
            return search(con, index, q, mode=mode, filters=filters, limit=limit, offset=offset)

    @app.exception_handler(AutointerpError)
    async def user_error(request: Request, exc: AutointerpError):
        if isinstance(exc, StoreBusy):
            return busy(request, exc)
        status = 403 if isinstance(exc, ReviewRefused) else 404 if isinstance(exc, NotFound) else 400
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc)}, status_code=status)
        return page("error.html", status=status, message=str(exc))

    def busy(request: Request, exc: StoreBusy):
        """503 with Retry-After; a page asked for with GET reloads itself then, as a user would."""
        headers = {"Retry-After": str(BUSY_RETRY_AFTER_S)}
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc)}, status_code=503, headers=headers)
        response = page(
            "error.html", status=503, message=str(exc), title="busy",
            reload_after=BUSY_RETRY_AFTER_S if request.method == "GET" else None,
        )
        response.headers.update(headers)
        return response

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/search", status_code=302)

    @app.get("/search", response_class=HTMLResponse, include_in_schema=False)
    def search_page(
        q: str = "", mode: str = "hybrid", source: str | None = None, model: str | None = None,
        layer: str | None = None, min_score: str | None = None, density_min: str | None = None,
        density_max: str | None = None, review: str | None = None, limit: int = 20, offset: int = 0,
    ) -> HTMLResponse:
        # The filter form sends empty fields as empty strings: they mean "no filter".
        filters = _filters(
            source, model, _number(layer, int, "layer"), min_score,
            _number(density_min, float, "density from"), _number(density_max, float, "density to"), review,
        )
        results = run_search(q, mode, filters, limit, offset)
        params = {k: v for k, v in dataclasses.asdict(filters).items() if v is not None}
        base = {"q": q, "mode": mode, "limit": limit, **params}
        prev_url = f"/search?{urlencode({**base, 'offset': max(offset - limit, 0)})}" if offset > 0 else None
        next_url = f"/search?{urlencode({**base, 'offset': offset + limit})}" if len(results.hits) == limit else None
        return page(
            "search.html", results=results, q=q, mode=mode, modes=MODES, filters=filters,
            review_states=REVIEW_STATES, prev_url=prev_url, next_url=next_url,
        )

    @app.get("/features/{source}/{feature}", response_class=HTMLResponse, include_in_schema=False)
    def feature_page(source: str, feature: int, request: Request) -> HTMLResponse:
        with access.reading() as con:
            view = feature_view(con, source, feature)
        return page(
            "feature.html", view=view, bars=_histogram(view), shade_max=_shade_max(view), verdicts=VERDICTS,
            review_mode=review_mode(request),
        )

    def review_mode(request: Request) -> str:
        """closed: no review forms; token: forms ask for the reviewer token; open: forms as they are."""
        if reviewers.read_only:
            return "closed"
        if reviewers.needs_token:
            try:
                reviewers.reviewer(request.cookies.get(COOKIE))
            except ReviewRefused:
                return "token"
        return "open"

    @app.post("/features/{source}/{feature}/reviews", include_in_schema=False)
    async def review_form(source: str, feature: int, request: Request) -> RedirectResponse:
        _same_origin(request)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8"), keep_blank_values=True).items()}
        reviewer = reviewers.reviewer(_token(request, form))
        try:
            explanation_id = int(form.get("explanation_id", ""))
        except ValueError:
            raise AutointerpError("the review form lacks the label's explanation_id") from None
        with access.writing() as con:
            review_label(
                con, explanation_id, form.get("verdict", ""), note=form.get("note") or None,
                edited_label=form.get("label") or None, reviewer=reviewer,
            )
        keeper.poke()  # an edit is a new label
        response = RedirectResponse(f"/features/{quote(source, safe='')}/{feature}", status_code=303)
        if form.get("token"):  # remembered by this browser, so the next review needs no typing
            response.set_cookie(COOKIE, form["token"], httponly=True, samesite="strict")
        return response

    @app.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def runs_page() -> HTMLResponse:
        with access.reading() as con:
            runs = list_runs(con, limit=100)
        return page("runs.html", runs=runs)

    @app.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def run_page(run_id: str) -> HTMLResponse:
        with access.reading() as con:
            view = run_view(con, run_id)
        return page("run.html", view=view)

    # ---- JSON API -------------------------------------------------------------------------------

    @app.get("/api/search", summary="Search labels", tags=["search"])
    def api_search(
        q: str = Query("", description="query text; empty lists labeled features"),
        mode: str = Query("hybrid", description="hybrid | keyword | semantic"),
        source: str | None = None, model: str | None = None, layer: int | None = None,
        min_score: str | None = Query(None, description="scorer:value or scorer.metric:value"),
        density_min: float | None = None, density_max: float | None = None,
        review: str | None = Query(None, description="accepted | rejected | edited | unreviewed"),
        limit: int = 20, offset: int = 0,
    ) -> dict:
        filters = _filters(source, model, layer, min_score, density_min, density_max, review)
        return jsonable_encoder(run_search(q, mode, filters, limit, offset).to_dict())

    @app.get("/api/features/{source}/{feature}", summary="A feature: stats, best label, history, contexts", tags=["features"])
    def api_feature(source: str, feature: int) -> dict:
        with access.reading() as con:
            return jsonable_encoder(dataclasses.asdict(feature_view(con, source, feature)))

    @app.get("/api/explanations/{explanation_id}", summary="One label with provenance, scores and reviews", tags=["explanations"])
    def api_explanation(explanation_id: int) -> dict:
        with access.reading() as con:
            found = load_labels(con, [explanation_id])
        if not found:
            raise NotFound(f"no label with explanation id {explanation_id} in this store")
        return jsonable_encoder(dataclasses.asdict(found[0]))

    @app.post(
        "/api/explanations/{explanation_id}/reviews",
        summary="Accept, reject or edit a label (with `Authorization: Bearer TOKEN` when the catalog has reviewer tokens)",
        tags=["reviews"],
    )
    def api_review(
        explanation_id: int,
        request: Request,
        verdict: str = Body(..., description="accept | reject | edit"),
        label: str | None = Body(None, description="the corrected label, for edit"),
        note: str | None = Body(None),
    ) -> dict:
        _same_origin(request)
        reviewer = reviewers.reviewer(_token(request))
        with access.writing() as con:
            current = review_label(con, explanation_id, verdict, note=note, edited_label=label, reviewer=reviewer)
        keeper.poke()
        return jsonable_encoder(dataclasses.asdict(current))

    @app.delete("/api/explanations/{explanation_id}", summary="Delete a label with its scores and reviews", tags=["explanations"])
    def api_delete_explanation(explanation_id: int, request: Request) -> dict:
        return delete(request, inventory.delete_label, explanation_id)

    @app.get("/api/sources", summary="Every source with its contexts and labels", tags=["sources"])
    def api_sources() -> list:
        with access.reading() as con:
            return jsonable_encoder([dataclasses.asdict(s) for s in inventory.sources(con)])

    @app.get("/api/sources/{source}", summary="One source with its contexts and labels", tags=["sources"])
    def api_source(source: str) -> dict:
        with access.reading() as con:
            return jsonable_encoder(dataclasses.asdict(inventory.source(con, source)))

    @app.get("/api/sources/{source}/labels", summary="A source's labels (of one feature, with ?feature=)", tags=["sources"])
    def api_source_labels(source: str, feature: int | None = None) -> list:
        with access.reading() as con:
            return jsonable_encoder([dataclasses.asdict(l) for l in inventory.labels(con, source, feature)])

    @app.delete("/api/sources/{source}", summary="Delete a source with its activations and labels", tags=["sources"])
    def api_delete_source(source: str, request: Request) -> dict:
        return delete(request, inventory.delete_source, source)

    @app.get("/api/runs/{run_id}", summary="A job's progress, tokens and cost", tags=["runs"])
    def api_run(run_id: str) -> dict:
        with access.reading() as con:
            return jsonable_encoder(dataclasses.asdict(run_view(con, run_id)))

    return app
