"""camserve: explainable image-classifier serving core.

The modules here know nothing about TorchServe or Gradio (STYLE.md #1):

- ``errors``: the exception hierarchy, each carrying its HTTP status;
- ``schema``: request options and the response, defined once;
- ``archs``: torchvision architectures and their Grad-CAM target layers;
- ``checkpoint``: reading checkpoints (weights only) into a ``ModelSpec`` and a model;
- ``imaging``: decoding and preprocessing images and masks;
- ``cam``: the fused prediction + Grad-CAM pass;
- ``render``: colormaps, heatmaps and overlays;
- ``parsing``: turning one request (raw, multipart or JSON) into image bytes and options;
- ``explainer``: the batch pipeline the handler calls;
- ``client``: the HTTP client the Gradio app and the scripts use.
"""

__version__ = "0.1.0"
