"""HTTP client for a camserve model on TorchServe, used by the Gradio app and the scripts.

Maps transport failures and the server's ``{code, type, message}`` bodies back to ``camserve.errors``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from camserve.errors import (
    CamserveError,
    DataError,
    InvalidRequest,
    ServerTimeout,
    ServerUnreachable,
    from_payload,
)
from camserve.schema import ExplainResponse, Explanation, ModelInfo, explanation_from_dict

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:8081"


def read_token(key_file: str | Path, kind: str = "inference") -> str:
    """A key from TorchServe's ``key_file.json`` (``inference``, ``management`` or ``API``), or the whole
    content of a plain token file (one line: e.g. a mounted Kubernetes Secret in front of a deployment).

    Raises:
        DataError: The file is missing, unreadable, empty or has no such key.
    """
    path = Path(key_file)
    try:
        text = path.read_text().strip()
    except FileNotFoundError as exc:
        raise DataError(f"token file {str(path)!r} not found: start TorchServe first (make serve)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"token file {str(path)!r} cannot be read ({type(exc).__name__})") from exc
    if not text.startswith("{"):
        if not text or len(text.splitlines()) != 1:
            raise DataError(f"token file {str(path)!r} must hold TorchServe's JSON keys or one token line")
        return text
    try:
        return str(json.loads(text)[kind]["key"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"token file {str(path)!r} has no {kind!r} key") from exc


class Client:
    """Talks to TorchServe's inference (and optionally management) API.

    Args:
        url: Inference API base URL.
        token: Inference token (``None`` when token auth is off).
        management_url: Management API base URL, for :meth:`models`.
        management_token: Management token.
        timeout: Seconds per request.
    """

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None,
                 management_url: str | None = None, management_token: str | None = None,
                 timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.management_url = management_url.rstrip("/") if management_url else None
        self.timeout = timeout
        self.session = requests.Session()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._mgmt_headers = {"Authorization": f"Bearer {management_token}"} if management_token else {}

    @classmethod
    def from_key_file(cls, key_file: str | Path, url: str = DEFAULT_URL,
                      management_url: str | None = None, timeout: float = 60.0) -> Client:
        """A client holding the inference and management keys of a ``key_file.json``."""
        mgmt = read_token(key_file, "management") if management_url else None
        return cls(url, read_token(key_file), management_url, mgmt, timeout)

    def explain(self, model: str, image: bytes, mask: bytes | None = None,
                **options: Any) -> ExplainResponse:
        """``POST /predictions/{model}``: prediction, Grad-CAM and (with ``label``) error metadata.

        Args:
            model: Model name.
            image: Encoded image bytes.
            mask: Optional region-of-interest mask image bytes (gives ``focus_score``).
            **options: ``target``, ``label``, ``topk``, ``explain``, ``colormap``, ``alpha``,
                ``max_side``, and for multimodal models ``clinical`` (a dict, sent as JSON) or the
                clinical fields by name; ``None`` values are not sent.
        """
        return ExplainResponse.from_dict(self._post(f"predictions/{model}", image, mask, options))

    def explanation(self, model: str, image: bytes, mask: bytes | None = None,
                    **options: Any) -> Explanation:
        """``POST /explanations/{model}``: the explanation object alone."""
        return explanation_from_dict(self._post(f"explanations/{model}", image, mask, options))

    def describe(self, model: str) -> ModelInfo:
        """The model's name, classes, input size, layer and tabular schema.

        Asks the management API (``GET /models/{model}?customized=true``, answered by the handler);
        without a management URL, sends one tiny prediction-only request (image-only models).
        """
        if not self.management_url:
            from camserve.imaging import blank_png
            try:
                return self.explain(model, blank_png(), explain="none").model
            except InvalidRequest as exc:  # e.g. a required clinical field
                raise InvalidRequest(f"cannot describe {model!r} with a blank request ({exc.message}): "
                                     "give the management URL and token") from exc
        body = self._call("GET", f"{self.management_url}/models/{model}", self._mgmt_headers,
                          params={"customized": "true"})
        try:
            meta = body[0]["customizedMetadata"]  # TorchServe parses the handler's JSON when it can
            return ModelInfo(**(json.loads(meta) if isinstance(meta, str) else meta))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise CamserveError(f"model {model!r} has no camserve metadata: is it served by camserve's handler?"
                                ) from exc

    def ping(self) -> str:
        """TorchServe's health status (``Healthy``), or raise."""
        return str(self._call("GET", f"{self.url}/ping", self._headers).get("status"))

    def models(self) -> list[str]:
        """Names of the models the server has loaded (management API)."""
        if not self.management_url:
            raise InvalidRequest("no management URL configured")
        body = self._call("GET", f"{self.management_url}/models", self._mgmt_headers)
        return sorted(m["modelName"] for m in body.get("models", []))

    def _post(self, route: str, image: bytes, mask: bytes | None, options: Mapping[str, Any]) -> dict[str, Any]:
        files = {"data": ("image", image, "application/octet-stream")}
        if mask is not None:
            files["mask"] = ("mask", mask, "application/octet-stream")
        data = {k: json.dumps(v) if isinstance(v, Mapping) else str(v) for k, v in options.items() if v is not None}
        body = self._call("POST", f"{self.url}/{route}", self._headers, files=files, data=data)
        if not isinstance(body, dict):
            raise CamserveError(f"unexpected answer from {route}: a JSON {type(body).__name__}, not an object")
        return body

    def _call(self, method: str, url: str, headers: Mapping[str, str], **kwargs: Any) -> Any:
        try:
            resp = self.session.request(method, url, headers=dict(headers), timeout=self.timeout, **kwargs)
        except requests.Timeout as exc:
            raise ServerTimeout(f"the model server did not answer within {self.timeout:g} s") from exc
        except requests.ConnectionError as exc:
            raise ServerUnreachable("the model server is not reachable; is TorchServe running?") from exc
        try:
            body = resp.json()
        except ValueError:
            body = resp.text[:300]
        if resp.status_code != 200:
            raise from_payload(resp.status_code, body)
        if not isinstance(body, (dict, list)):
            raise CamserveError(f"unexpected response from {url}: {str(body)[:200]}")
        return body
