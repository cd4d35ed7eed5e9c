"""Reports of a run folder: training curves, confusion matrix, per-class precision/recall, the
most confident mistakes, and one self-contained HTML page (``autotrain report RUN_DIR``).

Needs the ``report`` extra (matplotlib). Never imported by train: it reads what a run wrote.
"""

from .build import ReportResult, require_report_dependencies, write_report

__all__ = ["ReportResult", "require_report_dependencies", "write_report"]
