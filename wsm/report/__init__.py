"""``wsm report``: WSM + DATA masks -> REPORT (report.html, metrics.json, per_image.csv).

- :mod:`~wsm.report.driver`: the command: pair maps with masks, score, break down, write.
- :mod:`~wsm.report.metrics`: the official ISIC metrics (equal to isic-challenge-scoring).
- :mod:`~wsm.report.html`: the report page.
"""

from wsm._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "ReportSummary": "driver",
    "build_report": "driver",
})
