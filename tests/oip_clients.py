"""Clients nobody here wrote, against pocketcnn's Open Inference Protocol (V2) routes: Triton's tritonclient[http]
and the KServe SDK's InferenceRESTClient. Run in .venv-clients (`make clients`: their pins clash with the
project's), with no code from this repository; tests/test_oip_clients.py runs it and checks what it prints.

    .venv-clients/bin/python tests/oip_clients.py http://127.0.0.1:8000 fashion_mnist pixels.npy photo.png ...

Prints one JSON object: what each client reported (health, metadata, probabilities, classification strings, errors).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys

import numpy as np


def with_tritonclient(url: str, model: str, photos: list[bytes], pixels: np.ndarray) -> dict:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url.removeprefix("http://"))
    found = {"live": client.is_server_live(), "ready": client.is_server_ready(),
             "model_ready": client.is_model_ready(model), "unknown_model_ready": client.is_model_ready("no_such_model"),
             "server_metadata": client.get_server_metadata(), "model_metadata": client.get_model_metadata(model)}

    image = triton.InferInput("image", [len(photos)], "BYTES")
    image.set_data_from_numpy(np.array(photos, dtype=np.object_), binary_data=True)
    result = client.infer(model, [image], outputs=[triton.InferRequestedOutput("probabilities", binary_data=True)])
    found["image_probabilities"] = result.as_numpy("probabilities").tolist()
    found["image_response"] = {k: v for k, v in result.get_response().items() if k != "outputs"}

    result = client.infer(model, [image], outputs=[triton.InferRequestedOutput("probabilities", class_count=3)])
    found["classification"] = [[s.decode() for s in row] for row in result.as_numpy("probabilities")]

    result = client.infer(model, [image])  # no outputs named: every output, in binary (binary_data_output)
    found["default_output"] = result.as_numpy("probabilities").tolist()

    grid = triton.InferInput("pixels", list(pixels.shape), "UINT8")
    grid.set_data_from_numpy(pixels, binary_data=True)
    found["pixels_probabilities"] = client.infer(model, [grid]).as_numpy("probabilities").tolist()
    grid_json = triton.InferInput("pixels", list(pixels[:2].shape), "FP32")
    grid_json.set_data_from_numpy(pixels[:2].astype(np.float32), binary_data=False)
    result = client.infer(model, [grid_json], outputs=[triton.InferRequestedOutput("probabilities",
                                                                                     binary_data=False)])
    found["pixels_json_probabilities"] = result.as_numpy("probabilities").tolist()

    errors = {}
    for what, call in (("unknown model", lambda: client.infer("no_such_model", [image])),
                       ("not an image", lambda: client.infer(model, [bytes_input(triton, [b"not a photo"])])),
                       ("unknown version", lambda: client.infer(model, [image], model_version="99"))):
        try:
            call()
            errors[what] = None
        except InferenceServerException as err:
            errors[what] = {"status": err.status(), "message": err.message()}
    found["errors"] = errors
    client.close()
    return found


def bytes_input(triton, values: list[bytes]):
    tensor = triton.InferInput("image", [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=True)
    return tensor


async def with_kserve(url: str, model: str, photos: list[bytes], pixels: np.ndarray) -> dict:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    found = {"live": await client.is_server_live(url), "ready": await client.is_server_ready(url),
             "model_ready": await client.is_model_ready(url, model),
             "unknown_model_ready": await client.is_model_ready(url, "no_such_model")}

    image = InferInput("image", [len(photos)], "BYTES")
    image.set_data_from_numpy(np.array(photos, dtype=np.object_), binary_data=True)
    response = await client.infer(url, InferRequest(model_name=model, infer_inputs=[image]), model_name=model)
    found["image_probabilities"] = response.outputs[0].as_numpy().tolist()
    found["model_version"] = response.model_version

    # MLServer's convention: base64 strings in JSON, marked as such.
    encoded = InferInput("image", [len(photos)], "BYTES", data=[base64.b64encode(p).decode() for p in photos],
                         parameters={"content_type": "base64"})
    response = await client.infer(url, InferRequest(model_name=model, infer_inputs=[encoded]), model_name=model)
    found["base64_probabilities"] = response.outputs[0].as_numpy().tolist()

    grid = InferInput("pixels", list(pixels.shape), "UINT8")
    grid.set_data_from_numpy(pixels, binary_data=False)
    response = await client.infer(url, InferRequest(model_name=model, infer_inputs=[grid]), model_name=model)
    found["pixels_probabilities"] = response.outputs[0].as_numpy().tolist()
    try:
        await client.infer(url, InferRequest(model_name="no_such_model", infer_inputs=[image]),
                           model_name="no_such_model")
        found["unknown_model_error"] = None
    except Exception as err:  # noqa: BLE001 - httpx.HTTPStatusError, whose message carries the server's error
        found["unknown_model_error"] = {"status": err.response.status_code, "message": str(err)}
    await client.close()
    return found


def main(argv: list[str]) -> None:
    url, model, pixels_path, *photo_paths = argv
    photos = [open(path, "rb").read() for path in photo_paths]
    pixels = np.load(pixels_path)
    report = {"tritonclient": with_tritonclient(url, model, photos, pixels),
              "kserve": asyncio.run(with_kserve(url, model, photos, pixels))}
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
