"""Gradio front end for a camserve model on TorchServe: ``python -m gradio_app``.

The logic lives in plain modules with no Gradio in them (``client``, ``render``, ``batch``,
``examples``, ``settings``); ``app`` builds the ``gr.Blocks`` shell from them.
"""

import os

# Gradio reads this when it is imported: the demo never phones home, whoever imports it first.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
