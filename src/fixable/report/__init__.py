"""The run report: a self-contained HTML page, its figures as PNG and PDF, and summary.json.

``build_report(run_dir)`` is what ``fixable report RUN`` calls.
"""

from fixable.report.build import ReportFiles, build_report, ensure_analysis
from fixable.report.summary import build_summary

__all__ = ["ReportFiles", "build_report", "build_summary", "ensure_analysis"]
