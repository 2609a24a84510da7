"""captum's LayerIntegratedGradients on transformers, run by explain.py in a child process:
``python captum_peer.py WORK_DIR``.

A child process for the reason torch_peers.py gives: no mlx or mlx_models here. Reads
WORK_DIR/inputs.npz (the padded batches, baselines, targets and the classifier head) and the
model directory named in it; writes WORK_DIR/captum.npz (token attributions per batch) and prints
one JSON line with the wall time of each batch.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np


def main(work: Path) -> dict:
    import torch
    from captum.attr import LayerIntegratedGradients
    from transformers import AutoModelForSequenceClassification

    data = np.load(work / "inputs.npz")
    meta = json.loads(str(data["meta"]))
    model = AutoModelForSequenceClassification.from_pretrained(
        meta["model_dir"], num_labels=meta["num_labels"], attn_implementation="eager"
    ).eval()
    with torch.no_grad():  # the same head as the MLX model
        model.classifier.weight.copy_(torch.from_numpy(data["classifier_weight"]))
        model.classifier.bias.copy_(torch.from_numpy(data["classifier_bias"]))
    forward = lambda ids, mask: torch.softmax(model(input_ids=ids, attention_mask=mask).logits, dim=-1)  # noqa: E731
    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    t = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    times, out = [], {}
    for b in range(meta["batches"]):
        ids, mask, base, target = (data[f"{k}_{b}"] for k in ("ids", "mask", "base", "target"))
        tic = time.perf_counter()
        attr = lig.attribute(
            t(ids), baselines=t(base), target=t(target), additional_forward_args=(t(mask),),
            n_steps=meta["steps"], method="gausslegendre", internal_batch_size=meta["rows"],
        )  # fmt: skip
        times.append(time.perf_counter() - tic)
        out[f"tokens_{b}"] = attr.sum(-1).detach().numpy()
    np.savez(work / "captum.npz", **out)
    return {"times": times, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
