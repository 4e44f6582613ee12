"""tracer: a multiprocessing-safe distributed tracing runtime.

Every span from every process (threads, fork/spawn/forkserver children, pools) lands in one
trace. See README.md for the guide; the docstrings here are the API reference.
"""

__version__ = "0.2.0.dev0"  # the one place the version is written (pyproject.toml reads it)

from .api import (
    current_experiment,
    current_logger,
    current_span,
    flush,
    init,
    init_logger,
    permalink,
    start_span,
    traced,
    update_span,
)
from .attachments import Attachment, ExternalAttachment, JSONAttachment
from .event import SPAN_TYPES
from .experiment import Experiment, ExperimentSummary, MetricSummary, ScoreSummary
from .integrations import wrap_openai
from .logger import Logger
from .masking import set_masking_function
from .pool import TracedPool, TracedProcessPoolExecutor, TracedThreadPoolExecutor
from .recorder import FlushError
from .span import NoopSpan, Span

__all__ = [
    "SPAN_TYPES",
    "Attachment",
    "Experiment",
    "ExperimentSummary",
    "ExternalAttachment",
    "FlushError",
    "JSONAttachment",
    "Logger",
    "MetricSummary",
    "NoopSpan",
    "ScoreSummary",
    "Span",
    "TracedPool",
    "TracedProcessPoolExecutor",
    "TracedThreadPoolExecutor",
    "current_experiment",
    "current_logger",
    "current_span",
    "flush",
    "init",
    "init_logger",
    "permalink",
    "set_masking_function",
    "start_span",
    "traced",
    "update_span",
    "wrap_openai",
]
