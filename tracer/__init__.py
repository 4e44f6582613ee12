"""tracer: a multiprocessing-safe distributed tracing runtime.

Every span from every process (threads, fork/spawn/forkserver children, pools) lands in one
trace. See README.md for the guide; the docstrings here are the API reference.
"""

__version__ = "0.2.0.dev0"  # the one place the version is written (pyproject.toml reads it)

from . import config as _config
from . import propagation as propagation
from .api import (
    current_experiment,
    current_logger,
    current_span,
    flush,
    init,
    init_logger,
    parent_context,
    permalink,
    start_span,
    traced,
    update_span,
)
from .attachments import Attachment, ExternalAttachment, JSONAttachment
from .event import SPAN_TYPES
from .experiment import Experiment, ExperimentSummary, MetricSummary, ScoreSummary
from .integrations import auto_instrument, patch_openai, wrap_openai
from .logger import Logger
from .masking import set_masking_function
from .pool import TracedPool, TracedProcessPoolExecutor, TracedThreadPoolExecutor
from .recorder import FlushError
from .span import NOOP_SPAN, NoopSpan, Span
from .thread_context import setup_threads

# The reference's switch: BRAINTRUST_INSTRUMENT_THREADS=1 sets up threads as the package loads,
# for code that cannot call setup_threads() itself. A malformed value is warned about here, and
# refused by init_logger.
if _config.value_or_default("INSTRUMENT_THREADS"):
    setup_threads()

__all__ = [
    "NOOP_SPAN",
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
    "auto_instrument",
    "current_experiment",
    "current_logger",
    "current_span",
    "flush",
    "init",
    "init_logger",
    "parent_context",
    "patch_openai",
    "permalink",
    "setup_threads",
    "set_masking_function",
    "start_span",
    "traced",
    "update_span",
    "wrap_openai",
]
