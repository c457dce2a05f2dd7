"""Run by tests in a subprocess: Triton's own HTTP client against a server, JSON and binary.

``python tests/serve_client.py URL MODEL INPUT.npy OUTPUT.npz``: the input batch is sent twice
(JSON tensors, then the binary tensor extension) and both answers are saved. A subprocess
because Triton's client must not share a process with other protobuf users.
"""

import sys

import numpy as np
import tritonclient.http as httpclient


def main(url: str, model: str, src: str, dst: str) -> None:
    x = np.load(src)
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(model)
    meta = client.get_model_metadata(model)
    name, out = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
    answers = {}
    for kind, binary in (("json", False), ("binary", True)):
        inp = httpclient.InferInput(name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        result = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput(
            out, binary_data=binary)], request_id=f"test-{kind}")
        assert result.get_response()["id"] == f"test-{kind}"
        answers[kind] = result.as_numpy(out)
    np.savez(dst, **answers)


if __name__ == "__main__":
    main(*sys.argv[1:5])
