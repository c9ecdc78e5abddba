"""camserve: explainable image-classifier serving core.

The modules here know nothing about TorchServe or Gradio; the handler (``handlers/``) and the app
(``gradio_app/``) are thin adapters over them.

Serving (packed into every .mar, imported by the TorchServe handler):

- ``errors``: every failure as one exception tree, each carrying its HTTP status;
- ``schema``: request options and the response, defined once (schema version 2);
- ``parsing``: one request (raw, multipart or JSON) into image bytes and validated options, bounded;
- ``imaging``: decoding (one guarded step) and preprocessing of images and masks;
- ``tabular``: the clinical-field schema of multimodal models and its encoding;
- ``archs``: torchvision architectures, their default CAM layers and fusion layers;
- ``checkpoint``: self-describing checkpoints read as weights only into a ``ModelSpec`` and a model;
- ``cam``: the fused pass: prediction and every requested map from one forward;
- ``cam_methods``: the CAM formulas (Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM, fusion);
- ``faithfulness``: per-request faithfulness from one extra no-grad forward;
- ``render``: colormaps, heatmaps, overlays and their encoding;
- ``explainer``: the batch pipeline the handler calls, one answer per row whatever happens.

Clients and tools (never packed into a .mar):

- ``client``: the HTTP client the Gradio app and the scripts use;
- ``cli``: the one argparse vocabulary of every command;
- ``folders``: ImageFolder trees (image suffixes, a walk that stays inside its root, class folders);
- ``clinical_table``: the one reader of clinical CSV files;
- ``sanity``: the model-parameter randomisation test of the maps;
- ``analysis``: the dataset-wide error analysis behind ``scripts/analyze_errors.py``.
"""

__version__ = "0.1.0"
