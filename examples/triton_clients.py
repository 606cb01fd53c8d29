"""The README's serving example: unmodified tritonclient, over gRPC and REST, against `dlkit serve`.

    dlkit serve --port 8011 --grpc-port 8012 --models cnn-digits,mlp-diabetes
    python examples/triton_clients.py       # in the folder where examples/make_inputs.py wrote its files
"""
import numpy as np
import tritonclient.grpc as g
import tritonclient.http as h
from PIL import Image

from dlkit import load_dataset

x = load_dataset("diabetes", {}, 0).x_test[:3]  # three patients of the test split
c = g.InferenceServerClient("127.0.0.1:8012")
i = g.InferInput("input", list(x.shape), "FP32")
i.set_data_from_numpy(x)
r = c.infer("mlp-diabetes", [i])
print("gRPC mlp-diabetes prediction:", [round(float(v), 2) for v in r.as_numpy("prediction").ravel()])
hc = h.InferenceServerClient("127.0.0.1:8011")
img = (np.asarray(Image.open("seven.png").convert("L").resize((8, 8)), np.float32) / 255.0)[None, None]
hi = h.InferInput("input", list(img.shape), "FP32")
hi.set_data_from_numpy(img)
out = h.InferRequestedOutput("probabilities", class_count=3)
top3 = hc.infer("cnn-digits", [hi], outputs=[out]).as_numpy("probabilities").tolist()
print("REST cnn-digits top 3 (Triton's classification extension):", top3)
