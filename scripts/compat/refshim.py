"""What runs inside the pytest process of ``run_reference_tests.py`` (and in the processes its
tests start): the ``braintrust`` shim over ``tracer``, the store-backed memory logger, the reset
between tests, and the hooks (imported by the generated conftest) that record each test's
outcome.

Nothing here is imported by ``tracer`` or ``workers``; the runner puts this directory on
``PYTHONPATH`` and writes ``REFRUN_CONFIG`` (a JSON file) with:

- ``target``: ``"tracer"`` (the shim below answers ``import braintrust``) or ``"braintrust"``
  (the installed package or the reference's source answers it, with its own fixtures);
- ``label``: how messages name the target (``"tracer"``, ``"braintrust 0.48.1"``);
- ``ref_dir``: the reference's helper files, laid out as its package (``conftest.py``,
  ``test_helpers.py``, ``wrappers/test_utils.py``, ``wrappers/auto_test_scripts/``,
  ``wrappers/cassettes/``);
- ``ref_modules``: the reference package's module names (``braintrust.logger``, ...);
- ``imports``: per module, the names the test files import from it by name;
- ``store``: the SQLite store the tracer target writes to; ``outcomes``: where the plugin
  writes the outcome of every test.

How names resolve in the tracer target: ``braintrust`` and each ``braintrust.X`` is a module of
this shim that looks a public name up in ``tracer`` first, then in the tracer modules listed for
it in ``SOURCES``; a name found nowhere (and every private ``_name``) becomes a ``Missing``
stand-in, so the test file still imports and only the tests that use the name fail, with
``NotProvided: braintrust.X.name is not provided by tracer``. The harness itself provides the
reference's test doubles, never any of its API: ``_internal_with_memory_background_logger`` and
the fixtures of ``braintrust.test_helpers`` (whose pure helpers, such as ``assert_dict_matches``,
are the reference's own code).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import json
import os
import sys
import time
import types
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

# Where each reference module's names are looked up, after ``tracer`` itself (public names only;
# modules and names imported from outside tracer are skipped). The reference's ``braintrust``
# re-exports ``braintrust.logger`` (``from .logger import *``): both look in the same places.
_LOGGER = ("tracer.api", "tracer.logger", "tracer.experiment", "tracer.span", "tracer.attachments")
SOURCES: dict[str, tuple[str, ...]] = {
    "braintrust": _LOGGER,
    "braintrust.logger": _LOGGER,
    "braintrust.oai": ("tracer.integrations", "tracer.integrations.openai"),
    "braintrust.wrappers.openai": ("tracer.integrations", "tracer.integrations.openai"),
    "braintrust.wrappers.threads": ("tracer.integrations", "tracer.integrations.threads",
                                    "tracer.threads", "tracer.pool"),
}

# The memory logger leaves out rows that started (``metrics.start``, tracer's ``time.time()``)
# before it was made, less this margin: a test's spans all start after its memory logger exists,
# while a span an earlier test left open (a failed assertion skips its ``end()``) can still reach
# the store during this one, tracer storing a span once it has run for 0.1 s; tests take a few
# milliseconds each, so no margin. Rows already stored when it is made are taken as seen; a row
# without a numeric ``metrics.start`` is always kept.
WINDOW = 0.0

_config: dict[str, Any] | None = None


def config() -> dict[str, Any]:
    global _config
    if _config is None:
        path = os.environ.get("REFRUN_CONFIG")
        if not path:
            raise RuntimeError("refshim: REFRUN_CONFIG is not set (run run_reference_tests.py)")
        with open(path) as f:
            _config = json.load(f)
    return _config


# -- names the target does not have ----------------------------------------------------------


class NotProvided(Exception):
    """A name the reference tests use that the target does not provide."""


class Missing:
    """Stands for a name the target lacks: importing it works, using it in any way raises
    ``NotProvided`` (calling, attributes, truth, comparison, ``isinstance``, subclassing)."""

    def __init__(self, qualname: str, label: str) -> None:
        object.__setattr__(self, "_refshim_name", qualname)
        object.__setattr__(self, "_refshim_label", label)

    def _fail(self) -> NotProvided:
        return NotProvided(f"{self._refshim_name} is not provided by {self._refshim_label}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise self._fail()

    def __setattr__(self, name: str, value: Any) -> None:
        raise self._fail()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._fail()

    def __iter__(self) -> Iterator[Any]:
        raise self._fail()

    def __bool__(self) -> bool:
        raise self._fail()

    def __eq__(self, other: object) -> bool:
        raise self._fail()

    def __hash__(self) -> int:
        return id(self)

    def __getitem__(self, key: Any) -> Any:
        raise self._fail()

    def __enter__(self) -> Any:
        raise self._fail()

    def __exit__(self, *exc: object) -> None:
        raise self._fail()

    def __instancecheck__(self, instance: Any) -> bool:
        raise self._fail()

    def __subclasscheck__(self, subclass: Any) -> bool:
        raise self._fail()

    def __mro_entries__(self, bases: tuple) -> tuple:
        raise self._fail()

    def __repr__(self) -> str:
        return f"<{self._refshim_name}: not provided by {self._refshim_label}>"


_ABSENT = object()


def _lookup(source: types.ModuleType, name: str, top: bool) -> Any:
    """``source.name`` if it is a name to forward (not a module; for a submodule, not something
    it imported from outside tracer), else ``_ABSENT``."""
    value = getattr(source, name, _ABSENT)
    if value is _ABSENT or isinstance(value, types.ModuleType):
        return _ABSENT
    if not top:  # a submodule's own names, not what it imported from elsewhere
        owner = getattr(value, "__module__", None) if callable(value) else None
        if isinstance(owner, str) and not owner.startswith("tracer"):
            return _ABSENT
    return value


class ShimModule(types.ModuleType):
    """A ``braintrust`` module of the tracer target: names resolve as the module docstring says."""

    _refshim_sources: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        qualname = f"{self.__name__}.{name}"
        cfg = config()
        if qualname in cfg["ref_modules"]:  # a submodule, e.g. ``from braintrust import logger``
            return importlib.import_module(qualname)
        value: Any = _ABSENT
        if not name.startswith("_"):
            for i, source_name in enumerate(("tracer", *self._refshim_sources)):
                try:
                    source = importlib.import_module(source_name)
                except ImportError:
                    continue
                value = _lookup(source, name, top=i == 0)
                if value is not _ABSENT:
                    break
        if value is _ABSENT:
            value = Missing(qualname, cfg["label"])
        setattr(self, name, value)  # the same object on every import
        return value


class _ShimLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = ShimModule(spec.name)
        module._refshim_sources = SOURCES.get(spec.name, ())
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == "braintrust.logger":
            module._internal_with_memory_background_logger = (  # type: ignore[attr-defined]
                _internal_with_memory_background_logger)
        if module.__name__ == "braintrust.test_helpers":
            _exec_test_helpers(module)


class _ShimFinder(importlib.abc.MetaPathFinder):
    """Answers every ``braintrust.*`` import of the tracer target: the reference's helper files
    (its conftest, ``wrappers/test_utils.py``) from ``ref_dir``, everything else a ShimModule."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("braintrust."):
            return None
        rel = fullname.split(".")[1:]
        helper = os.path.join(config()["ref_dir"], *rel) + ".py"
        if rel != ["test_helpers"] and os.path.isfile(helper):
            return importlib.util.spec_from_file_location(fullname, helper)
        spec = importlib.machinery.ModuleSpec(fullname, _ShimLoader(), is_package=True)
        spec.submodule_search_locations = []
        if rel == ["test_helpers"]:
            spec.origin = helper
            spec.has_location = True
        return spec


def install_tracer_shim(package: str) -> None:
    """Called by the generated ``braintrust/__init__.py`` of the tracer target."""
    module = sys.modules[package]
    module.__class__ = ShimModule
    module._refshim_sources = SOURCES[package]  # type: ignore[attr-defined]
    if not any(isinstance(f, _ShimFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _ShimFinder())


# -- the reference's test doubles, backed by our store ----------------------------------------


def _flush() -> None:
    import tracer

    tracer.flush(timeout=30)


class StoredRows:
    """The reference's memory logger (``_MemoryBackgroundLogger``) for the tracer target.

    ``pop()`` flushes this process (``tracer.flush()``) and returns the rows of the store that
    are new or changed since the last ``pop()`` (or since this object was made), merged as the
    store merges them, in the underlying format the store holds (the reader's ``project_name``
    and ``experiment_name`` taken off again). The reference's ``pop()`` returns the merged rows
    logged since its last ``pop()``, so a row updated after a pop comes back whole here and as
    the update alone there; no test of the three files tells the two apart.
    """

    def __init__(self) -> None:
        self.store = config()["store"]
        with contextlib.suppress(Exception):  # a previous test's losses are its own
            _flush()
        self._since = time.time() - WINDOW
        self._seen: dict[tuple, str] = {key: sig for key, sig, _ in self._read()}

    def _read(self) -> list[tuple[tuple, str, dict]]:
        if not os.path.exists(self.store):  # nothing was ever committed
            return []
        from workers.store import open_store

        found = []
        with open_store(self.store, readonly=True) as reader:
            for row in reader.rows():
                key = (row.pop("project_name", None), row.pop("experiment_name", None),
                       row.get("id"))
                if _started_before(row, self._since):
                    continue
                found.append((key, json.dumps(row, sort_keys=True, default=repr), row))
        return found

    def pop(self) -> list[dict]:
        _flush()
        changed = []
        for key, sig, row in self._read():
            if self._seen.get(key) != sig:
                self._seen[key] = sig
                changed.append(row)
        # The reference's memory logger gives rows in the order they were last written; the
        # store lists them by start. A span's last write is its end (its start while it runs).
        changed.sort(key=_last_written)
        return changed

    def flush(self, batch_size: int | None = None) -> None:
        _flush()


def _last_written(row: dict) -> float:
    metrics = row.get("metrics")
    if not isinstance(metrics, dict):
        return 0.0
    for name in ("end", "start"):
        value = metrics.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


def _started_before(row: dict, since: float) -> bool:
    metrics = row.get("metrics")
    start = metrics.get("start") if isinstance(metrics, dict) else None
    return isinstance(start, (int, float)) and not isinstance(start, bool) and start < since


@contextlib.contextmanager
def _internal_with_memory_background_logger() -> Iterator[StoredRows]:
    yield StoredRows()


def _fake_project_id(init: Any, project_name: str) -> dict[str, Any]:
    """The reference's test helpers give the project the id of its name (fake metadata in place
    of the server's); passed on as ``project_id=`` where tracer takes one."""
    try:
        accepted = "project_id" in inspect.signature(init).parameters
    except (TypeError, ValueError):
        accepted = False
    return {"project_id": project_name} if accepted else {}


def init_test_logger(project_name: str) -> Any:
    """The reference's ``init_test_logger``: a logger of the project, in the harness's store."""
    import tracer

    init: Any = tracer.init_logger
    return init(project_name, store=config()["store"], **_fake_project_id(init, project_name))


def init_test_exp(experiment_name: str, project_name: str | None = None) -> Any:
    """The reference's ``init_test_exp``: an experiment of the project, in the harness's store."""
    import tracer

    init: Any = tracer.init
    project_name = project_name or experiment_name
    return init(project_name, experiment_name, store=config()["store"],
                **_fake_project_id(init, project_name))


def simulate_login() -> None:
    """No login to simulate: there is no service."""


def simulate_logout() -> None:
    """No login to undo."""


def assert_logged_out() -> None:
    """Always true: nothing logs in."""


@pytest.fixture
def with_simulate_login() -> Iterator[None]:
    yield


@pytest.fixture
def with_memory_logger() -> Iterator[StoredRows]:
    yield StoredRows()


@pytest.fixture
def memory_logger() -> Iterator[StoredRows]:
    yield StoredRows()


_HARNESS_HELPERS = {
    "init_test_logger": init_test_logger,
    "init_test_exp": init_test_exp,
    "simulate_login": simulate_login,
    "simulate_logout": simulate_logout,
    "assert_logged_out": assert_logged_out,
    "with_simulate_login": with_simulate_login,
    "with_memory_logger": with_memory_logger,
    "memory_logger": memory_logger,
}


def _exec_test_helpers(module: types.ModuleType) -> None:
    """``braintrust.test_helpers``: the reference's file run as it is (its pure helpers such as
    ``assert_dict_matches`` are used unchanged), then the helpers that reach into the
    reference's internals replaced by the ones above."""
    path = os.path.join(config()["ref_dir"], "test_helpers.py")
    module.__file__ = path
    with open(path) as f:
        code = compile(f.read(), path, "exec")
    exec(code, module.__dict__)
    module.__dict__.update(_HARNESS_HELPERS)


def reset_tracer_state() -> None:
    """What the reference's conftest does after each test (a new ``BraintrustState``), for
    tracer: no current logger, experiment or span, no masking function."""
    import tracer
    from tracer import config as tracer_config
    from tracer import context

    state = context.state
    state.logger = state.experiment = state.parent_object = None
    context.current.set(None)
    os.environ.pop(tracer_config.ENV_CONTAINER, None)
    set_masking = getattr(tracer, "set_masking_function", None)
    if set_masking is not None:
        set_masking(None)


@pytest.fixture(autouse=True)
def reset_braintrust_state() -> Iterator[None]:
    """Replaces the reference conftest's fixture of this name for the tracer target."""
    yield
    reset_tracer_state()


# -- the braintrust target: the reference's own package ---------------------------------------


def prepare() -> None:
    """Called first by the generated conftest. Tracer target: load the shim. Braintrust target:
    make the reference's helper files importable as its modules (where the package lacks them:
    the installed wheel has no ``conftest`` nor ``wrappers/test_utils``), and give each name the
    test files import but the package lacks a ``Missing`` stand-in, as for tracer."""
    cfg = config()
    import braintrust

    if cfg["target"] == "tracer":
        return
    import braintrust.wrappers

    ref_dir = cfg["ref_dir"]
    braintrust.__path__.append(ref_dir)
    braintrust.wrappers.__path__.append(os.path.join(ref_dir, "wrappers"))
    for module_name, names in cfg["imports"].items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if not isinstance(exc, ModuleNotFoundError) or exc.name != module_name:
                continue  # it exists but needs what is not installed: left to the tests
            module = types.ModuleType(module_name)
            module.__path__ = []
            sys.modules[module_name] = module
            parent, _, leaf = module_name.rpartition(".")
            setattr(sys.modules[parent], leaf, module)
        for name in names:
            if not hasattr(module, name):
                setattr(module, name, Missing(f"{module_name}.{name}", cfg["label"]))


# -- the plugin: each test's outcome ------------------------------------------------------------


_outcomes: dict[str, dict[str, Any]] = {}
_collect_errors: list[dict[str, str]] = []


def _first_line(report: Any) -> str:
    longrepr = report.longrepr
    text = ""
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        text = crash.message
    elif isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, line, reason)
        text = str(longrepr[2])
    elif longrepr is not None:
        lines = [line for line in str(longrepr).splitlines() if line.strip()]
        errors = [line[1:].strip() for line in lines if line.startswith("E ")]
        text = errors[0] if errors else (lines[-1] if lines else "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0]
    if first.endswith(":") and len(lines) > 1:
        # "Failed: Traceback ...:" or "Script x failed:" (a subprocess's stderr follows): add
        # the last line before pytest's own "assert ..." explanation, the error itself.
        body = lines[1:]
        cut = next((i for i, line in enumerate(body) if line.startswith("assert ")), len(body))
        if body[:cut]:
            first = f"{first} ... {body[:cut][-1]}"
    return first[:300]


def pytest_runtest_logreport(report: Any) -> None:
    """Each test's outcome and the first line of its error. For an xfailed test the reason is
    the error it failed with (any error satisfies a plain ``xfail`` mark); ``xfail`` holds the
    mark's reason."""
    entry = _outcomes.setdefault(report.nodeid, {"outcome": None, "reason": "", "duration": 0.0})
    entry["duration"] += getattr(report, "duration", 0.0) or 0.0
    wasxfail = getattr(report, "wasxfail", None)
    if wasxfail is not None:
        entry["xfail"] = wasxfail
    if report.when == "setup":
        if report.failed:
            entry.update(outcome="error", reason=_first_line(report))
        elif report.skipped:
            entry.update(outcome="xfailed" if wasxfail is not None else "skipped",
                         reason=_first_line(report))
    elif report.when == "call":
        if report.passed:
            entry.update(outcome="xpassed" if wasxfail is not None else "passed", reason="")
        elif report.skipped:
            entry.update(outcome="xfailed" if wasxfail is not None else "skipped",
                         reason=_first_line(report))
        else:
            entry.update(outcome="failed", reason=_first_line(report))
    elif report.failed and entry["outcome"] in ("passed", "xpassed", None):
        entry.update(outcome="error", reason="teardown: " + _first_line(report))


def pytest_collectreport(report: Any) -> None:
    if report.failed:
        _collect_errors.append({"nodeid": report.nodeid, "reason": _first_line(report)})


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    path = os.environ.get("REFRUN_CONFIG") and config().get("outcomes")
    if path:
        # The aggregator the run started (tracer sets this variable): the runner waits for it
        # to exit before it removes the store, which a live aggregator would make again.
        pid = os.environ.get("_TRACER_AGGREGATOR_PID")
        with open(path, "w") as f:
            json.dump({"tests": _outcomes, "collect_errors": _collect_errors,
                       "aggregator_pid": int(pid) if pid and pid.isdigit() else None}, f,
                      indent=1)
