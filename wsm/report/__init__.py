"""``wsm report``: WSM + DATA masks -> REPORT (report.html, metrics.json, per_image.csv).

- :mod:`~wsm.report.driver`: the command: pair maps with masks, score, break down, write.
- :mod:`~wsm.report.scoring`: per-image scores, breakdowns, intervals, the predicted quality's ranking.
- below it: the official ISIC metrics in :mod:`wsm.metrics`, reading maps in :mod:`wsm.folders.maps`.
- :mod:`~wsm.report.html`: the report page.
"""

from wsm._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "ReportSummary": "driver",
    "build_report": "driver",
})
