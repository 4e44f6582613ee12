"""`tracer serve`: the real command on a free loopback port, over a store written by a real
traced program through the real aggregator. Every endpoint, its filters and pages, its 404s,
attachments, hostile input, the API key, the bind rule and the security headers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from tracer import wire
from workers.queue import Pending
from workers.rows import Container
from workers.server.app import ATTACHMENT_HEADERS, CSP
from workers.store.sqlite import SQLiteWriter

from .conftest import TraceServer as Server
from .conftest import clean_env, free_port, run_cli, run_function
from .server_programs import PNG, TRACES, write_api_store

PROJECT = "api-test"
KEY = "s3cret-key-for-tests"
LOGS = Container(wire.logs_container(PROJECT))

# An attachment may be framed by the viewer's own pages (a PDF in an <object>): its policy says
# frame-ancestors 'self' where every other response says 'none'.
ATTACHMENT_CSP = dict(ATTACHMENT_HEADERS)[b"content-security-policy"].decode()


def expected_csp(path: str) -> str:
    return ATTACHMENT_CSP if path.startswith("/api/attachments/") else CSP


@dataclass
class Data:
    store: str
    roots: list[str]
    big: str
    files: str
    experiments: dict[str, str]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    store = str(tmp_path_factory.mktemp("server") / "traces.db")
    proc = run_function(write_api_store, store, env=clean_env(), timeout=120)
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return Data(store, found["roots"], found["big"], found["files"], found["experiments"])


@pytest.fixture(scope="module")
def server(data, tmp_path_factory) -> Iterator[Server]:
    with Server(data.store, str(tmp_path_factory.mktemp("serve") / "serve.log")) as server:
        yield server


@pytest.fixture(scope="module")
def keyed(data, tmp_path_factory) -> Iterator[Server]:
    with Server(data.store, str(tmp_path_factory.mktemp("serve") / "keyed.log"),
                "--api-key", KEY) as server:
        yield server


def get_json(server: Server, path: str, status: int = 200, **kwargs: Any) -> Any:
    response = server.get(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def traces(server: Server, query: str = "") -> list[dict]:
    return get_json(server, f"/api/projects/{PROJECT}/traces?{query}")["traces"]


def request_roots(data: Data, *indexes: int) -> list[str]:
    """The root ids of these request traces, newest first (as the API lists them)."""
    return [data.roots[i] for i in sorted(indexes, reverse=True)]


# -- projects and traces ---------------------------------------------------------------------


def test_projects_lists_each_project_with_its_counts(server):
    projects = get_json(server, "/api/projects")["projects"]

    [project] = [p for p in projects if p["name"] == PROJECT]
    assert project["traces"] == TRACES + 2 and project["experiments"] == 2
    assert isinstance(project["id"], str) and isinstance(project["last_start"], float)


def test_a_projects_traces_are_listed_newest_first_with_their_summaries(server, data):
    listed = traces(server)

    assert [t["root_span_id"] for t in listed] == [data.files, data.big,
                                                  *request_roots(data, *range(TRACES))]
    first = next(t for t in listed if t["root_span_id"] == data.roots[0])
    assert first["name"] == "request 0" and first["type"] == "task"
    assert (first["spans"], first["errors"], first["tokens"], first["running"]) == (
        4, 1, 10, False)
    assert first["scores"] == {"quality": 0.0} and first["duration"] > 0
    assert first["row_id"] == data.roots[0]


@pytest.mark.parametrize(("query", "expected"), [
    ("errors=1", (0, 4, 8)),
    ("type=llm", (0, 3, 6, 9)),
    ("name=request%201", (1, 10, 11)),
    ("q=penguins", (0, 3, 6, 9)),
    ("q=lookup%207", (7,)),
    ("meta=model%3Dm-odd&meta=attempt%3D3", (3,)),
    ("score=quality:gt:0.8", (10, 11)),
    ("score=quality:lt:0.1&errors=1", (0,)),
])
def test_filters_keep_only_the_traces_that_match(server, data, query, expected):
    assert [t["root_span_id"] for t in traces(server, query)] == request_roots(data, *expected)


def test_text_search_on_a_store_indexed_with_search_off_is_400_saying_how_to_turn_it_on(
        tmp_path):
    store = str(tmp_path / "traces.db")
    with SQLiteWriter(store, search_index="off") as writer:
        root = "r1"
        row = {"id": root, "span_id": root, "root_span_id": root, "input": "penguins",
               "span_attributes": {"name": "root", "type": "task"}, **LOGS.columns}
        writer.write([Pending((LOGS.id, root), row, 100, 0, LOGS)])
    with Server(store, str(tmp_path / "serve.log")) as server:
        found = get_json(server, f"/api/projects/{PROJECT}/traces?q=penguins", 400)
        assert "TRACER_SEARCH_INDEX=all" in found["error"]
        assert len(traces(server)) == 1  # the other filters answer as ever


def test_since_and_until_bound_the_roots_start(server, data):
    listed = traces(server)
    starts = {t["root_span_id"]: t["start"] for t in listed}
    since, until = starts[data.roots[2]], starts[data.roots[5]]

    kept = traces(server, f"since={since!r}&until={until!r}")

    assert [t["root_span_id"] for t in kept] == request_roots(data, 2, 3, 4)


def test_pages_walk_every_trace_once_and_newest_follows_the_live_tail(server, data):
    seen: list[str] = []
    query = "limit=5"
    while True:
        page = get_json(server, f"/api/projects/{PROJECT}/traces?{query}")
        seen += [t["root_span_id"] for t in page["traces"]]
        if page["next"] is None:
            break
        query = f"limit=5&before={page['next']}"
    assert seen == [t["root_span_id"] for t in traces(server, "limit=500")]

    page = get_json(server, f"/api/projects/{PROJECT}/traces?limit=5")
    tail = get_json(server, f"/api/projects/{PROJECT}/traces?after={page['newest']}")
    assert tail["traces"] == [] and tail["newest"] == page["newest"]
    older = get_json(server, f"/api/projects/{PROJECT}/traces?"
                             f"after={page['next']}")["traces"]
    assert [t["root_span_id"] for t in older] == seen[:4]


def test_an_unknown_project_is_404_with_a_json_error(server):
    body = get_json(server, "/api/projects/no-such-project/traces", 404)
    assert body == {"error": "no project 'no-such-project'"}
    assert get_json(server, "/api/projects/no-such-project/experiments", 404)["error"]


# -- traces and spans ------------------------------------------------------------------------


def test_a_trace_is_its_skeleton_in_start_order(server, data):
    skeleton = get_json(server, f"/api/traces/{data.roots[0]}")

    assert skeleton["root_span_id"] == data.roots[0]
    assert skeleton["container"] == {"kind": "project_logs", "project": PROJECT,
                                     "experiment_id": None, "experiment_name": None}
    spans = skeleton["spans"]
    assert [s["name"] for s in spans] == ["request 0", "retrieve", "validate", "answer"]
    assert [s["parents"] for s in spans[1:]] == [[data.roots[0]]] * 3
    assert [s["error"] for s in spans] == [False, False, True, False]
    assert set(spans[0]) == {"row_id", "span_id", "parents", "name", "type", "start", "end",
                             "error", "running"}


def test_a_span_is_its_whole_row(server, data):
    skeleton = get_json(server, f"/api/traces/{data.roots[0]}")
    validate = skeleton["spans"][2]

    row = get_json(server, f"/api/traces/{data.roots[0]}/spans/{validate['span_id']}")["row"]

    assert row["span_attributes"]["name"] == "validate"
    assert row["error"].startswith("ValueError: bad input 0")
    assert row["project_name"] == PROJECT


def test_a_field_over_64_kb_is_cut_to_a_preview_unless_full_is_asked(server, data):
    path = f"/api/traces/{data.big}/spans/{data.big}"

    cut = get_json(server, path)["row"]["input"]
    whole = get_json(server, path + "?full=1")["row"]["input"]

    assert cut["truncated"] is True and cut["bytes"] == 100_002
    assert cut["preview"] == '"' + "x" * 4095
    assert whole == "x" * 100_000


def test_unknown_traces_and_spans_are_404_with_a_json_error(server, data):
    assert get_json(server, "/api/traces/nope", 404) == {"error": "no trace 'nope'"}
    assert "no span" in get_json(server, f"/api/traces/{data.roots[0]}/spans/nope", 404)["error"]


# -- experiments -----------------------------------------------------------------------------


def test_experiments_are_listed_with_their_score_means(server, data):
    listed = get_json(server, f"/api/projects/{PROJECT}/experiments")["experiments"]

    by_name = {e["name"]: e for e in listed}
    assert set(by_name) == {"baseline", "candidate"}
    assert by_name["baseline"]["id"] == data.experiments["baseline"]
    assert (by_name["baseline"]["traces"], by_name["baseline"]["spans"]) == (2, 2)
    assert by_name["baseline"]["scores"]["accuracy"] == pytest.approx(0.5)
    assert by_name["candidate"]["scores"]["accuracy"] == pytest.approx(0.65)


def test_an_experiments_traces_are_listed_like_a_projects(server, data):
    listed = get_json(server, f"/api/experiments/{data.experiments['baseline']}/traces")

    assert [t["spans"] for t in listed["traces"]] == [1, 1]
    assert get_json(server, "/api/experiments/nope/traces", 404)["error"]


def test_compare_pairs_the_two_experiments_rows_by_input(server, data):
    a, b = data.experiments["baseline"], data.experiments["candidate"]

    found = get_json(server, f"/api/compare?a={a}&b={b}")

    assert (found["a"]["name"], found["b"]["name"]) == ("baseline", "candidate")
    assert found["scores"]["accuracy"]["delta"] == pytest.approx(0.15)
    assert [(r["match"], r["a"]["input"], r["status"]) for r in found["rows"]] == [
        ("input", "q1", "improvement"), ("input", "q2", "regression")]
    assert get_json(server, f"/api/compare?a={a}&b=nope", 404)["error"]
    assert get_json(server, f"/api/compare?a={a}", 400)["error"]


def test_stats_lists_the_aggregator_runs_with_their_counters(server):
    runs = get_json(server, "/api/stats")["runs"]

    # Each run's counters are its last snapshot, as `tracer stats --json` prints it.
    assert runs and all(isinstance(run["counters"], dict) for run in runs)
    assert sum(run["counters"]["counters"].get("rows_committed", 0) for run in runs) > 0
    assert all("queue_depth" in run["counters"] for run in runs)


# -- attachments -----------------------------------------------------------------------------


def attachment_keys(server: Server, data: Data) -> dict[str, str]:
    found = get_json(server, f"/api/traces/{data.files}/spans/{data.files}")
    refs = found["row"]["input"]
    assert all(found["attachments"][ref["key"]]["upload_status"] == "done"
               for ref in refs.values())
    return {name: ref["key"] for name, ref in refs.items()}


def test_an_attachment_is_served_with_its_content_type_and_as_a_download(server, data):
    key = attachment_keys(server, data)["image"]

    shown = server.get(f"/api/attachments/{key}")
    saved = server.get(f"/api/attachments/{key}?download=1")

    assert shown.status_code == 200 and shown.content == PNG
    assert shown.headers["content-type"] == "image/png"
    assert "content-disposition" not in shown.headers
    assert saved.headers["content-disposition"].startswith('attachment; filename="pixel.png"')


def test_an_attachment_never_runs_as_a_page_or_a_script_of_the_viewer(server, data):
    keys = attachment_keys(server, data)

    page = server.get(f"/api/attachments/{keys['page']}")
    script = server.get(f"/api/attachments/{keys['script']}")
    as_script = server.get(f"/api/attachments/{keys['image']}",
                           headers={"Sec-Fetch-Dest": "script"})

    assert "sandbox" in page.headers.get_list("content-security-policy")
    assert script.headers["content-type"].startswith("text/plain")
    assert as_script.status_code == 400


@pytest.mark.parametrize("path", [
    "/api/attachments/../../traces.db",
    "/api/attachments/..%2F..%2Ftraces.db",
    "/api/attachments/%2e%2e%2ftraces.db",
    "/api/attachments/" + "0" * 32,
    "/api/attachments/" + "0" * 31 + "/",
    "/api/attachments/" + "G" * 32,
    "/static/../app.py",
    "/static/..%2Fapp.py",
    "/static/%2e%2e/%2e%2e/store/sqlite.py",
    "/static//etc/passwd",
])
def test_paths_that_try_to_leave_their_directory_get_nothing(server, path):
    status, headers, body = server.raw(path)

    assert status == 404
    assert b"SQLite format" not in body and b"import" not in body and b"root:" not in body
    assert headers["content-type"].startswith("application/json")


# -- hostile input ---------------------------------------------------------------------------

HOSTILE = ["'", '"', "%00", "%FF%FE", "%ED%A0%80", "%F0%9F%92%A9", "-1", "1e999", "nan",
           "inf", "9" * 400, "a" * 5000, "%25s%25n", "${x}", "(", "\\", "[]", "{}",
           "eyJ4IjoxfQ", "WzEsMl0", "WyJhIiwiYiJd", "WzEuMCw1XQ", "%0D%0ASet-Cookie:%20x=1",
           "<script>", "x:gt:", ":gt:1", "x:eq:1", "=v", "k="]


@pytest.mark.parametrize("param", ["limit", "before", "after", "since", "until", "name", "type",
                                   "errors", "score", "meta", "q"])
def test_hostile_query_strings_get_an_answer_never_a_traceback(server, param):
    for value in HOSTILE:
        response = server.get(f"/api/projects/{PROJECT}/traces?{param}={value}")
        assert response.status_code in (200, 400), (value, response.text)
        assert "Traceback" not in response.text and "File \"" not in response.text
        if response.status_code == 400:
            assert set(response.json()) == {"error"}


@pytest.mark.parametrize("path", [
    "/api/traces/%00", "/api/traces/%ED%A0%80", "/api/traces/" + "a" * 5000,
    "/api/traces/x/spans/%FF", "/api/projects/%00/traces", "/api/projects/%ED%A0%80/experiments",
    "/api/experiments/%C0%AF/traces", "/api/compare?a=%00&b=%ED%A0%80", "/api/nope",
    "/api/traces/x?full=2", "/p/%ED%A0%80/logs",
])
def test_hostile_paths_get_an_answer_never_a_traceback(server, path):
    status, _, body = server.raw(path)

    assert status in (200, 400, 404), body
    assert b"Traceback" not in body


# -- pages and headers -----------------------------------------------------------------------


def test_every_page_of_the_viewer_is_its_index(server, data):
    for path in (f"/p/{PROJECT}/logs?r={data.roots[0]}&s={data.roots[0]}", "/",
                 f"/p/{PROJECT}/experiments", f"/p/{PROJECT}/experiments/baseline?r=x&s=y",
                 f"/p/{quote('a/b', safe='')}/logs", f"/p/{PROJECT}/compare?a=1&b=2",
                 "/status"):
        response = server.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert response.text.lstrip().lower().startswith("<!doctype html>")


@pytest.mark.parametrize("path", ["/api/projects", "/", "/static/index.html", "/api/nope",
                                  "/api/traces/nope", "/login", "/nope"])
def test_every_response_carries_the_security_headers(server, path):
    response = server.get(path, follow_redirects=False)

    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"


def test_without_a_key_only_a_loopback_host_name_is_answered(server):
    assert server.get("/api/projects", headers={"Host": f"localhost:{server.port}"}) \
        .status_code == 200
    refused = server.get("/api/projects", headers={"Host": "attacker.example"})

    assert refused.status_code == 400 and "loopback" in refused.json()["error"]


# -- the API key -----------------------------------------------------------------------------

ROUTES = ["/", f"/p/{PROJECT}/logs", "/status", "/static/index.html", "/api/projects",
          f"/api/projects/{PROJECT}/traces", f"/api/projects/{PROJECT}/experiments",
          "/api/traces/x", "/api/traces/x/spans/y", "/api/compare?a=1&b=2", "/api/stats",
          "/api/attachments/" + "0" * 32, "/api/experiments/x/traces", "/nope"]


@pytest.mark.parametrize("path", ROUTES)
def test_with_a_key_every_route_refuses_a_request_without_it_or_with_a_wrong_one(keyed, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                    {"Authorization": f"Basic {KEY}"}, {"Cookie": "tracer_session=forged"}):
        response = keyed.get(path, headers=headers, follow_redirects=False)
        if path.startswith(("/api/", "/static/")):
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"]
        else:  # a page sends the browser to the sign-in form
            assert response.status_code == 303, (path, headers)
            assert response.headers["location"].startswith("/login?next=")
        assert response.headers["content-security-policy"] == expected_csp(path)


def test_with_a_key_the_bearer_key_is_let_in(keyed, data):
    headers = {"Authorization": f"Bearer {KEY}"}

    assert keyed.get("/api/projects", headers=headers).status_code == 200
    assert keyed.get(f"/api/traces/{data.roots[0]}", headers=headers).status_code == 200
    assert keyed.get("/", headers=headers).status_code == 200


def test_signing_in_with_the_key_sets_a_cookie_that_lets_the_browser_in(keyed):
    with httpx.Client(base_url=keyed.url, timeout=30) as browser:
        wrong = browser.post("/login", data={"key": "nope", "next": "/status"})
        assert wrong.status_code == 401 and not browser.cookies

        signed_in = browser.post("/login", data={"key": KEY, "next": "/p/x/logs?r=1"})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/p/x/logs?r=1"
        cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert KEY not in signed_in.headers["set-cookie"]

        assert browser.get("/api/projects").status_code == 200


def test_signing_in_never_sends_the_browser_to_another_site(keyed):
    for target in ("https://evil.example/", "//evil.example", "/\\evil.example"):
        response = httpx.post(keyed.url + "/login", data={"key": KEY, "next": target})
        assert response.headers["location"] == "/"


def test_with_a_key_any_host_name_is_answered(keyed):
    response = keyed.get("/api/projects", headers={"Authorization": f"Bearer {KEY}",
                                                   "Host": "traces.example"})
    assert response.status_code == 200


def test_the_key_can_come_from_tracer_api_key(data, tmp_path):
    with Server(data.store, str(tmp_path / "serve.log"), env={"TRACER_API_KEY": KEY}) as server:
        assert server.get("/api/projects").status_code == 401
        assert server.get("/api/projects",
                          headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


# -- the command -----------------------------------------------------------------------------


def test_binding_a_non_loopback_address_without_a_key_is_refused(data):
    proc = run_cli("serve", "--store", data.store, "--host", "0.0.0.0", "--port",
                   str(free_port()), timeout=30)

    assert proc.returncode == 2
    assert "--host 0.0.0.0 is not a loopback address" in proc.stderr
    assert "--api-key" in proc.stderr and "Traceback" not in proc.stderr


def copy_store(source: str, target: str, version: int | None = None) -> None:
    """A consistent copy of a store (SQLite's backup: the WAL too), its schema version set."""
    import sqlite3

    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
        if version is not None:
            dst.execute(f"PRAGMA user_version = {version:d}")
            dst.commit()
    finally:
        src.close()
        dst.close()


def test_serve_refuses_a_store_that_needs_upgrading(tmp_path, data):
    old = str(tmp_path / "old.db")
    copy_store(data.store, old, version=1)

    proc = run_cli("serve", "--store", old, "--port", str(free_port()), timeout=30)

    assert proc.returncode == 2
    assert f"tracer migrate --store {old}" in proc.stderr


def test_a_store_replaced_by_one_that_needs_upgrading_is_answered_503(tmp_path, data):
    store = str(tmp_path / "served.db")
    copy_store(data.store, store)
    with Server(store, str(tmp_path / "serve.log")) as server:
        assert get_json(server, "/api/projects")["projects"]
        old = str(tmp_path / "old.db")
        copy_store(data.store, old, version=1)
        os.replace(old, store)

        body = get_json(server, "/api/projects", 503)

    assert "tracer migrate" in body["error"]


def test_serve_on_a_store_not_written_yet_lists_no_projects(tmp_path):
    with Server(str(tmp_path / "later.db"), str(tmp_path / "serve.log")) as server:
        assert get_json(server, "/api/projects") == {"projects": []}
        assert get_json(server, "/api/traces/x", 404)["error"].startswith("no store yet")


def test_serve_help_names_every_option():
    proc = run_cli("serve", "--help")

    for option in ("--store", "--host", "--port", "--api-key", "--insecure", "8585",
                   "127.0.0.1"):
        assert option in proc.stdout


def test_import_tracer_loads_neither_starlette_nor_uvicorn():
    code = ("import sys, tracer; tracer.init_logger('x', store=sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('starlette', 'uvicorn', 'workers')))")
    proc = subprocess.run([sys.executable, "-c", code, os.devnull + ".db"],
                          capture_output=True, text=True, env=clean_env(), timeout=60)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_permalink_a_span_gives_is_a_page_of_this_server(tmp_path):
    code = ("import tracer, sys; tracer.init_logger('linked', store=sys.argv[1]); "
            "s = tracer.start_span('x'); print(s.permalink()); s.end(); tracer.flush()")
    store = str(tmp_path / "t.db")
    link = subprocess.run([sys.executable, "-c", code, store], capture_output=True,
                          text=True, env=clean_env(), timeout=60).stdout.strip()
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "127.0.0.1:8585", "/p/linked/logs")

    with Server(store, str(tmp_path / "serve.log")) as server:
        assert server.get(f"{parts.path}?{parts.query}").status_code == 200
        root = dict(p.split("=") for p in parts.query.split("&"))["r"]
        assert get_json(server, f"/api/traces/{root}")["spans"][0]["name"] == "x"
