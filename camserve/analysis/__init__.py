"""Dataset-wide error analysis: pure metrics, records, figures and reports (no TorchServe, no Gradio).

``scripts/analyze_errors.py`` sends every image of an ImageFolder tree to the served model and builds
its report with this package:

- :mod:`~camserve.analysis.metrics`: confusion, per-class P/R/F1, balanced and top-k accuracy,
  calibration (ECE), confident-learning label issues, on numpy arrays;
- :mod:`~camserve.analysis.dataset`: scanning the tree, masks, safe output names;
- :mod:`~camserve.analysis.clinical`: the ``--tabular`` CSV of clinical fields for multimodal models;
- :mod:`~camserve.analysis.records`: the append-only ``predictions.jsonl`` that makes runs resumable;
- :mod:`~camserve.analysis.runner`: the thread pool and the retry policy;
- :mod:`~camserve.analysis.report`: metrics assembled into the JSON/CSV outputs;
- :mod:`~camserve.analysis.figures` and :mod:`~camserve.analysis.report_html`: PNG figures and one
  self-contained HTML page.
"""
