"""Dataset-wide error analysis: pure metrics, records, figures and reports (no TorchServe, no Gradio).

``scripts/analyze_errors.py`` sends every image of an ImageFolder tree to the served model and builds
its report with this package:

- :mod:`~camserve.analysis.dataset`: listing the tree (links never followed), masks, safe output names;
- :mod:`~camserve.analysis.remote`: the requests (prediction pass, the two maps of an error) and the
  servers; :mod:`~camserve.analysis.runner`: the thread pool and the retry policy;
- :mod:`~camserve.analysis.records`: the append-only ``predictions.jsonl`` that makes runs resumable;
- :mod:`~camserve.analysis.results`: the latest records as arrays;
- :mod:`~camserve.analysis.metrics`: confusion, per-class P/R/F1, balanced and top-k accuracy,
  calibration (ECE), ROC / PR curves and AUC, binary test figures, confident-learning label issues
  and label quality, on numpy arrays; :mod:`~camserve.analysis.localisation`: pointing game and focus
  against masks;
- :mod:`~camserve.analysis.report`, :mod:`~camserve.analysis.sections`,
  :mod:`~camserve.analysis.headline`, :mod:`~camserve.analysis.provenance`: the JSON / CSV outputs;
- :mod:`~camserve.analysis.figures`, :mod:`~camserve.analysis.cards`, :mod:`~camserve.analysis.gallery`,
  :mod:`~camserve.analysis.html_parts` and :mod:`~camserve.analysis.report_html`: PNG figures, map
  overlays drawn locally, and one self-contained HTML page.

Clinical fields of multimodal models are read with :mod:`camserve.clinical_table`.
"""
