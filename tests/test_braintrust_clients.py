"""The reference SDK's own clients log into ``tracer serve``: the real ``braintrust`` package,
unmodified, in fresh interpreters, with ``BRAINTRUST_API_URL``/``APP_URL`` pointing at a real
``tracer serve`` on loopback (``workers/server/braintrust_api.py``) and ``BRAINTRUST_API_KEY``
its key; no other network. Its rows are read back from the server's store and through the
viewer's JSON API, and compared field by field with what the same programs store under
tracer (``tests/compat/scenarios.py``, run by ``tests/compat/differential.py``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from workers.store.sqlite import SQLiteReader

from . import braintrust_programs as programs
from .compat.differential import compare, describe, run_sides
from .compat.scenarios import SCENARIOS
from .compat.test_differential import KNOWN_DIFFERENCES
from .conftest import TraceServer, clean_env, python_command, run_cli, run_function
from .server_programs import PNG

KEY = "bt-key-for-tracer-serve-tests"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[TraceServer]:
    """One ``tracer serve --api-key KEY`` over a new store, for the module (each test logs into
    projects of its own)."""
    directory = tmp_path_factory.mktemp("bt-serve")
    with TraceServer(str(directory / "traces.db"), str(directory / "serve.log"),
                     "--api-key", KEY) as server:
        yield server


def sdk_env(server: TraceServer, key: str = KEY, **extra: str) -> dict[str, str]:
    """The environment of a program using the reference SDK with this server; no proxies (the
    SDK reaches nothing but the server, on loopback)."""
    env = clean_env(BRAINTRUST_API_URL=server.url, BRAINTRUST_APP_URL=server.url,
                    BRAINTRUST_API_KEY=key, NO_PROXY="127.0.0.1,localhost", **extra)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        env.pop(name, None)
    return env


def run_sdk(server: TraceServer, program: Any, *args: Any, cwd: str | None = None,
            key: str = KEY) -> dict[str, Any]:
    """Run a program of ``braintrust_programs`` against the server; what it printed last."""
    proc = run_function(program, *args, env=sdk_env(server, key), timeout=120, cwd=cwd)
    found: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return found


def stored(server: TraceServer, project: str) -> dict[str, dict]:
    """The rows of a project (logs and experiments) in the server's store, by span name."""
    with SQLiteReader(server_store(server)) as reader:
        return {row["span_attributes"]["name"]: row for row in reader.rows(project=project)}


def server_store(server: TraceServer) -> str:
    return os.path.join(os.path.dirname(server.log_path), "traces.db")


def get(server: TraceServer, path: str, **kwargs: Any) -> Any:
    response = server.get(path, headers={"Authorization": f"Bearer {KEY}"}, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


# -- logs --------------------------------------------------------------------------------------


def test_nested_spans_updates_and_errors_are_stored_as_the_sdk_logged_them(server):
    project = "bt-logs"
    ids = run_sdk(server, programs.log_spans, project)

    rows = stored(server, project)

    assert set(rows) == {"answer", "retrieve", "request", "fails", "root"}
    answer, retrieve = rows["answer"], rows["retrieve"]
    assert answer["span_attributes"]["type"] == "llm"
    assert (answer["input"], answer["output"]) == ({"question": "where"}, "where: 2 docs")
    assert retrieve["span_parents"] == [answer["span_id"]]
    assert retrieve["root_span_id"] == answer["root_span_id"]
    assert (retrieve["metadata"], retrieve["metrics"]["hits"]) == ({"index": "docs"}, 2)
    request = rows["request"]
    assert request["id"] == ids["request"]
    # The span's own writes, then two updates merged in after it ended.
    assert request["output"] == "because, updated"
    assert request["metadata"] == {"user": "u1", "nested": {"a": 1, "b": 2}}
    assert request["scores"] == {"exact": 1.0, "reviewed": 0.5}
    assert (request["expected"], request["tags"], request["metrics"]["tokens"]) == (
        "because", ["t1"], 12)
    assert request["metrics"]["start"] <= request["metrics"]["end"]
    assert rows["fails"]["error"].rstrip().endswith("ValueError: boom")
    assert (rows["root"]["id"], rows["root"]["input"]) == (ids["logged"], "direct")
    # Where each span was started, as the reference records it.
    assert answer["context"]["caller_functionname"] == "log_spans"


def test_the_viewers_api_shows_the_sdks_traces(server):
    project = "bt-viewer"
    run_sdk(server, programs.log_spans, project)
    rows = stored(server, project)

    listed = get(server, f"/api/projects/{project}/traces")["traces"]
    answer = rows["answer"]
    [trace] = [t for t in listed if t["root_span_id"] == answer["root_span_id"]]
    assert trace["spans"] == 2
    skeleton = get(server, f"/api/traces/{answer['root_span_id']}")
    assert {s["name"]: s["parents"] for s in skeleton["spans"]} == {
        "answer": [], "retrieve": [answer["span_id"]]}
    span = get(server, f"/api/traces/{answer['root_span_id']}/spans/{answer['span_id']}")
    assert span["row"]["output"] == "where: 2 docs"
    assert project in [p["name"] for p in get(server, "/api/projects")["projects"]]


def test_a_row_logged_again_without_merge_replaces_the_stored_row_whole(server):
    """``logger.log(id=X)`` twice, in two flushes: the second is written whole (no
    ``_is_merge``), so the fields only the first had are gone, as in the reference."""
    project = "bt-replace"
    run_sdk(server, programs.log_twice_by_id, project)

    [row] = stored(server, project).values()

    assert (row["id"], row["input"], row["output"]) == ("fixed", "second", "replaced")
    assert "metadata" not in row and "tags" not in row


def test_a_field_no_row_has_is_left_out_counted_and_the_row_kept(server):
    project = "bt-unknown-field"
    before = get(server, "/api/stats")["ingest"]["counters"].get("braintrust_fields_dropped", 0)

    run_sdk(server, programs.log_unknown_field, project)

    [row] = stored(server, project).values()
    assert row["input"] == "kept" and "foo" not in row
    counters = get(server, "/api/stats")["ingest"]["counters"]
    assert counters["braintrust_fields_dropped"] == before + 1
    assert counters["braintrust_rows"] >= 1
    assert "left out fields that no row has: foo" in server.log()


# -- experiments -------------------------------------------------------------------------------


def test_an_experiment_is_stored_as_ours_and_summarize_compares_it_with_the_previous_one(
        server):
    project = "bt-experiments"
    first = run_sdk(server, programs.run_experiment, project, "baseline", [0.0, 1.0])
    second = run_sdk(server, programs.run_experiment, project, "candidate", [1.0, 1.0])

    assert second["project_id"] == first["project_id"]
    with SQLiteReader(server_store(server)) as reader:
        rows = list(reader.rows(experiment=second["id"]))
        listed = {e["name"]: e for e in reader.experiments(project) or []}
    assert {r["span_attributes"]["name"] for r in rows} == {"case 0", "case 1", "task"}
    assert {r["experiment_name"] for r in rows} == {"candidate"}
    case = next(r for r in rows if r["span_attributes"]["name"] == "case 0")
    assert (case["input"], case["output"], case["expected"], case["scores"]) == (
        "q0", "a0", "a0", {"accuracy": 1.0})
    assert listed["candidate"]["id"] == second["id"]
    assert listed["baseline"]["scores"] == {"accuracy": 0.5}

    assert first["comparison"] is None
    assert first["scores"]["accuracy"]["score"] == 0.5
    assert second["comparison"] == "baseline"
    assert second["scores"]["accuracy"] == {"score": 1.0, "diff": 0.5, "improvements": 1,
                                            "regressions": 0}
    assert second["metrics"]["tokens"] == 15  # the mean over the spans that logged it


def test_an_experiment_name_given_twice_starts_two_experiments_of_that_name(server):
    project = "bt-same-name"
    first = run_sdk(server, programs.run_experiment, project, "again", [1.0])
    second = run_sdk(server, programs.run_experiment, project, "again", [0.0])

    assert first["id"] != second["id"]
    assert first["name"] == second["name"] == "again"


def test_the_urls_summarize_prints_open_the_viewers_pages(server):
    response = server.get("/app/tracer/p/bt-experiments/experiments/candidate",
                          headers={"Authorization": f"Bearer {KEY}"}, follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"] == "/p/bt-experiments/experiments/candidate"


# -- attachments and large payloads ------------------------------------------------------------


def test_attachments_are_stored_as_ours_and_served_by_the_viewer(server, tmp_path):
    project = "bt-attachments"
    import base64

    ids = run_sdk(server, programs.log_attachments, project, base64.b64encode(PNG).decode(),
                  cwd=str(tmp_path))

    [row] = stored(server, project).values()
    image = row["input"]["image"]
    assert image == {"type": "braintrust_attachment", "filename": "pixel.png",
                     "content_type": "image/png", "key": ids["image"]}
    served = server.get(f"/api/attachments/{image['key']}",
                        headers={"Authorization": f"Bearer {KEY}"})
    assert (served.status_code, served.content) == (200, PNG)
    assert served.headers["content-type"] == "image/png"
    with SQLiteReader(server_store(server)) as reader:
        keys = [image["key"], row["input"]["more"][0]["key"], row["output"]["data"]["key"]]
        records = reader.attachments(keys)
    assert [records[k]["status"] for k in keys] == ["done"] * 3
    assert [records[k]["filename"] for k in keys] == ["pixel.png", "notes.txt", "data.json"]
    note = server.get(f"/api/attachments/{keys[1]}",
                      headers={"Authorization": f"Bearer {KEY}"})
    assert note.content == b"notes from a file"
    span = get(server, f"/api/traces/{row['root_span_id']}/spans/{row['span_id']}")
    assert {k: v["upload_status"] for k, v in span["attachments"].items()} == dict.fromkeys(
        keys, "done")


def test_a_payload_over_the_servers_limit_comes_through_the_overflow(tmp_path):
    """``--max-body 64K``: ``/version`` says so, and the SDK sends a 150 KB span by the
    overflow (a signed URL of the server, then /logs3 naming it)."""
    store = str(tmp_path / "traces.db")
    with TraceServer(store, str(tmp_path / "serve.log"), "--api-key", KEY,
                     "--max-body", "64K") as small:
        ids = run_sdk(small, programs.log_large, "bt-large", 150_000)

        with SQLiteReader(store) as reader:
            [row] = list(reader.rows(project="bt-large"))
    assert (row["id"], len(row["input"]), row["output"]) == (ids["span"], 150_000, "ok")
    assert os.listdir(os.path.join(str(tmp_path / "traces.attachments"), "overflow")) == []


# -- keys --------------------------------------------------------------------------------------


def test_a_wrong_key_gets_the_sdks_login_error_and_nothing_is_stored(server):
    project = "bt-wrong-key"

    found = run_sdk(server, programs.log_with_wrong_key, project, key="not-the-key")

    assert found["raised"] is not None and "Invalid API key" in found["raised"], found
    assert "401" in found["raised"]
    if os.path.exists(server_store(server)):  # (else nothing was ever stored there)
        with SQLiteReader(server_store(server)) as reader:
            assert project not in {c["project_name"] for c in reader.containers()}


def test_a_key_of_tracer_keys_create_limited_to_a_project_logs_there_and_nowhere_else(
        trace_server, tmp_path):
    store = str(tmp_path / "traces.db")
    made = run_cli("keys", "create", "--name", "team", "--project", "bt-scoped", "--store",
                   store)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    served = trace_server(store)  # no --api-key: the store's keys only

    run_sdk(served, programs.log_twice_by_id, "bt-scoped", key=key)
    elsewhere = run_sdk(served, programs.log_with_wrong_key, "not-theirs", key=key)

    with SQLiteReader(store) as reader:
        assert [r["id"] for r in reader.rows(project="bt-scoped")] == ["fixed"]
        assert "not-theirs" not in {c["project_name"] for c in reader.containers()}
    assert elsewhere["raised"] is not None and "403" in elsewhere["raised"], elsewhere


def test_every_call_of_the_sdks_api_needs_the_key(server):
    for method, path in (("POST", "/api/apikey/login"), ("GET", "/version"),
                         ("POST", "/v1/project"), ("POST", "/v1/experiment"),
                         ("POST", "/logs3"), ("POST", "/attachment"),
                         ("POST", "/logs3/overflow"), ("GET", "/v1/experiment/x/summarize")):
        for headers in ({}, {"Authorization": "Bearer wrong"},
                        {"Cookie": "tracer_session=whatever"}):
            response = httpx.request(method, server.url + path, headers=headers, timeout=30)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert "error" in response.json()


HOSTILE = [
    ("/logs3", b"not json", 400, "not JSON"),
    ("/logs3", b'{"rows": {"a": 1}, "api_version": 2}', 400, "rows"),
    ("/logs3", b'{"rows": [], "api_version": 1}', 400, "api_version"),
    ("/logs3", b'{"rows": [[1, 2]]}', 400, "row 0"),
    ("/logs3", b'{"rows": [{"id": "a", "project_id": "nope", "log_id": "g"}]}', 400,
     "no such project"),
    ("/logs3", b'{"rows": [{"id": "a", "experiment_id": "nope"}]}', 400, "no such experiment"),
    ("/logs3", b'{"rows": [{"id": "a", "dataset_id": "d"}]}', 400, "dataset_id"),
    ("/logs3", b'{"rows": [{"id": "a", "_object_delete": true}]}', 400, "deleting"),
    ("/logs3", b'{"rows": {"type": "logs3_overflow", "key": "../../etc/passwd"}}', 400,
     "overflow key"),
    ("/logs3", b'{"rows": {"type": "logs3_overflow", "key": "' + b"0" * 32 + b'"}}', 400,
     "never uploaded"),
    ("/v1/project", br'{"name": "a\u001fb"}', 400, "control character"),
    ("/v1/project", b'{"name": 7}', 400, "name"),
    ("/v1/project", b'{"name": "' + b"p" * 2000 + b'"}', 400, "at most"),
    ("/v1/project", b"[1]", 400, "object"),
    ("/v1/experiment", b'{"project_id": "unknown"}', 404, "no such project"),
    ("/attachment", b'{"key": "../x", "filename": "f", "content_type": "t"}', 400, "key"),
    ("/logs3/overflow", b'{"size_bytes": -1}', 400, "size_bytes"),
    ("/logs3/overflow", b'{"size_bytes": 99999999999}', 413, "at most"),
    ("/api/base_experiment/get_id", b'{"id": 3}', 400, "id"),
]


@pytest.mark.parametrize("path, body, status, says", HOSTILE)
def test_bodies_the_api_cannot_take_get_a_json_error_saying_why(server, path, body, status,
                                                                 says):
    response = httpx.post(server.url + path, content=body, timeout=30,
                          headers={"Authorization": f"Bearer {KEY}"})

    assert response.status_code == status, response.text
    assert says in response.json()["error"]


def test_a_path_of_the_api_that_does_not_exist_is_a_json_404(server):
    response = httpx.get(server.url + "/v1/nothing-here", timeout=30)

    assert (response.status_code, response.json()) == (404, {"error": "Not Found"})


def test_an_upload_url_works_only_as_this_server_signed_it(server):
    made = httpx.post(server.url + "/attachment", timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"},
                      json={"key": "0" * 32, "filename": "f", "content_type": "text/plain"})
    url = made.json()["signedUrl"]
    assert KEY not in url
    token = url.rsplit("/", 1)[1]
    body, _, mac = token.partition(".")
    # A changed first character always changes the bytes (a last one may differ only in the
    # padding bits base64 ignores, or already be the character put there).
    other = {c: "B" if c != "B" else "C" for c in (body[0], mac[0])}
    for forged in (f"{body}.{other[mac[0]]}{mac[1:]}", f"{other[body[0]]}{body[1:]}.{mac}",
                   "garbage"):
        response = httpx.put(f"{server.url}/attachment/upload/{forged}", content=b"x",
                             timeout=30)
        assert response.status_code == 403, forged
    assert httpx.put(url, content=b"fine", timeout=30).status_code == 200


# -- field by field, against tracer -------------------------------------------------------------


def test_the_sdks_rows_through_tracer_serve_differ_from_tracers_only_as_the_reference_does(
        server, tmp_path):
    """Every scenario of ``tests/compat/scenarios.py`` run three ways at once: the reference
    SDK logging to ``tracer serve`` over HTTP, the reference's in-memory logger (no network),
    and tracer. Through the server, the reference's rows are the in-memory ones field by field
    (ids and times aside), and differ from tracer's exactly where the differential test says
    the reference does (``KNOWN_DIFFERENCES``)."""
    env = clean_env()
    results = run_sides(str(tmp_path), python_command, {
        "reference-http": (sdk_env(server), server_store(server)),
        "reference": (env, str(tmp_path / "unused.db")),
        "tracer": (env, str(tmp_path / "traces.db")),
    }, timeout=300)
    http, memory, ours = results["reference-http"], results["reference"], results["tracer"]
    assert set(http) == set(memory) == set(ours) == set(SCENARIOS)

    unlike_memory = [describe(s, p, v) for s in SCENARIOS
                     for p, v in compare(memory[s], http[s]).items()]
    assert not unlike_memory, "\n".join(unlike_memory)

    found = {(s, p): v for s in SCENARIOS for p, v in compare(http[s], ours[s]).items()}
    unexpected = [describe(s, p, v) for (s, p), v in sorted(found.items())
                  if (s, p) not in KNOWN_DIFFERENCES]
    assert not unexpected, "\n".join(unexpected)
    assert set(found) == set(KNOWN_DIFFERENCES)


# -- the TypeScript SDK --------------------------------------------------------------------------

TS_SDK_DIR = os.environ.get("TRACER_TS_SDK_DIR")  # where `npm install braintrust` was run


@pytest.mark.skipif(not TS_SDK_DIR or shutil.which("node") is None,
                    reason="needs node and TRACER_TS_SDK_DIR (a directory where `npm install "
                           "braintrust` was run): the README says how this was last run")
def test_the_typescript_sdk_logs_spans_errors_attachments_and_an_experiment(server, tmp_path):
    assert TS_SDK_DIR is not None
    project = "bt-typescript"
    program = os.path.join(str(tmp_path), "log_to_tracer.mjs")  # resolves braintrust there
    shutil.copy(os.path.join(os.path.dirname(__file__), "typescript", "log_to_tracer.mjs"),
                program)
    os.symlink(os.path.join(TS_SDK_DIR, "node_modules"), os.path.join(str(tmp_path),
                                                                     "node_modules"))
    proc = subprocess.run(["node", program, project], env=sdk_env(server), cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])

    rows = stored(server, project)
    assert set(rows) == {"outer", "inner", "fails", "files", "case"}
    assert rows["inner"]["span_parents"] == [rows["outer"]["span_id"]]
    assert (rows["outer"]["input"], rows["outer"]["output"], rows["outer"]["scores"]) == (
        {"q": "hi"}, 2, {"s": 1})
    assert "boom" in rows["fails"]["error"]
    assert rows["files"]["input"]["file"]["key"] == found["key"]
    served = server.get(f"/api/attachments/{found['key']}",
                        headers={"Authorization": f"Bearer {KEY}"})
    assert served.content == b"hello from ts"
    assert rows["case"]["experiment_name"] == "ts-experiment"
    assert found["scores"]["acc"]["score"] == 1
