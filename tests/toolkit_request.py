"""A model folder's answers through the SageMaker PyTorch inference toolkit's handler service.

    python tests/toolkit_request.py MODEL_DIR REQUESTS.json   # prints the answers as one JSON line

Runs in any environment holding torch, numpy and `sagemaker-pytorch-inference`: the deploy check's
venv with an older torch (`make test-deploy`, tests/deploy) or the project's. Importing `tsa` fails
in it, so the handler and the model code it loads show that they need none of the tsa package.
REQUESTS.json is a list of `{"body": text or {"base64": ...}, "headers": {...}}`; the output holds
the torch and toolkit versions and, per request, `{"status", "message", "content_type", "body"}`.

`TorchServeContext` is also the stand-in that tests/unit/test_serving.py gives the handler service.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any


class TorchServeContext:
    """The per-request context TorchServe's frontend gives a handler service (TorchServe itself needs Java).

    Only its interface is stood in for: the toolkit's own handler service, transformer, module
    loading and error mapping all run for real.
    """

    class RequestProcessor:
        def __init__(self, headers: dict[str, str]) -> None:
            self.headers = headers

        def get_request_properties(self) -> dict[str, str]:
            return self.headers

    def __init__(self, model_dir: str, headers: dict[str, str]) -> None:
        self.system_properties = {"model_dir": model_dir, "gpu_id": None}
        self.request_processor = [self.RequestProcessor(headers)]
        self.model_name = "model"
        self.status: tuple[int, str] | None = None
        self.content_type: str | None = None

    def set_response_status(self, code: int, phrase: str) -> None:
        self.status = (code, phrase)

    def set_response_content_type(self, index: int, value: str) -> None:
        self.content_type = value


def _body(raw: str | dict[str, str]) -> bytes:
    return base64.b64decode(raw["base64"]) if isinstance(raw, dict) else raw.encode()


def answers(model_dir: str, requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Start the toolkit's handler service over `model_dir` as its server start does, then send each request."""
    from importlib.metadata import version

    import torch
    from sagemaker_pytorch_serving_container.handler_service import HandlerService

    sys.path.insert(0, os.path.join(model_dir, "code"))  # the toolkit's server start puts code/ on the path
    service = HandlerService()
    service.initialize(TorchServeContext(model_dir, {}))
    out = []
    for request in requests:
        context = TorchServeContext(model_dir, request["headers"])
        response = service.handle([{"body": _body(request["body"])}], context)
        status, message = context.status or (200, "")
        out.append({"status": status, "message": message, "content_type": context.content_type,
                    "body": str(response[0])})
    return {"torch": torch.__version__, "toolkit": version("sagemaker-pytorch-inference"), "answers": out}


if __name__ == "__main__":
    sys.modules["tsa"] = None  # type: ignore[assignment]  # `import tsa` fails: the handler must not need it
    with open(sys.argv[2]) as handle:
        print(json.dumps(answers(sys.argv[1], json.load(handle))))
