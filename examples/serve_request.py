"""Start `dlkit serve` on a free loopback port, send one KServe v2 request, print the answer.

Used by `make demo`; the request itself is plain JSON over urllib.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

MODEL = sys.argv[1] if len(sys.argv) > 1 else "cnn-digits"



def sample_three() -> list[float]:
    """A real handwritten 3 from scikit-learn's digits (8x8, pixel / 16, as dlkit trains on it)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = int((digits.target == 3).nonzero()[0][-1])
    return [float(v) / 16 for v in digits.images[index].ravel()]


def main() -> None:
    server = subprocess.Popen([sys.executable, "-m", "dlkit", "serve", "--port", "0", "--grpc-port", "0", "--models", MODEL,
                               "--no-access-log"], stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.time() + 60
        while url is None and time.time() < deadline:
            line = server.stderr.readline()
            if not line:
                break
            if "http://" in line:
                url = line[line.index("http://"):].split()[0]
        if url is None:
            sys.exit("dlkit serve did not start")
        body = {"id": "demo", "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                          "data": sample_three()}],
                "outputs": [{"name": "probabilities"}]}
        request = urllib.request.Request(f"{url}/v2/models/{MODEL}/infer", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        print(f"POST {url}/v2/models/{MODEL}/infer  (a handwritten 3)")
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
        probs = answer["outputs"][0]["data"]
        best = max(range(len(probs)), key=probs.__getitem__)
        print(f"-> label {best} with probability {probs[best]:.3f} (model {answer['model_name']}:{answer['model_version']})")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
