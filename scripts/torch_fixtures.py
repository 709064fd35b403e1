"""Makes the PyTorch parity fixtures of timetape (tests/fixtures/torch/).

For each case: a model `embedding` (optional nn.Embedding) -> `rnn` (nn.RNN tanh or relu,
nn.GRU or nn.LSTM, 1 or 2 layers, unidirectional, batch_first=False) -> `head`
(nn.Linear), seeded weights, its state dict saved with safetensors.torch.save_file
(CASE.safetensors), and CASE.json with the inputs (or tokens), labels, the loss
(softmax cross-entropy at every step, mean over batch and time, h_0 = 0) and every
gradient keyed by its state-dict name.

    python scripts/torch_fixtures.py [OUT_DIR]

Needs torch and safetensors from the package registry (pip install torch safetensors);
not needed by the tests, which read the committed fixtures. Also a template for a user
who wants to check their own model: `cargo run --release --example torch_parity --
MODEL.safetensors CASE.json`.
"""

import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

T, B, D, H, Q, V = 4, 3, 5, 6, 4, 7


class Model(nn.Module):
    def __init__(self, cell, num_layers, vocab):
        super().__init__()
        if vocab:
            self.embedding = nn.Embedding(vocab, D)
        if cell in ("rnn_tanh", "rnn_relu"):
            self.rnn = nn.RNN(D, H, num_layers, nonlinearity=cell[4:])
        elif cell == "gru":
            self.rnn = nn.GRU(D, H, num_layers)
        else:
            self.rnn = nn.LSTM(D, H, num_layers)
        self.head = nn.Linear(H, Q)

    def forward(self, x):
        if hasattr(self, "embedding"):
            x = self.embedding(x)
        out, _ = self.rnn(x)  # h_0 = 0
        return self.head(out)  # T x B x Q


def case(cell, num_layers, embedded, dtype, seed):
    torch.manual_seed(seed)
    model = Model(cell, num_layers, V if embedded else None).to(dtype)
    if embedded:
        x = torch.randint(0, V, (T, B))
    else:
        x = torch.randn(T, B, D, dtype=dtype)
    labels = torch.randint(0, Q, (T, B))
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(T * B, Q), labels.reshape(T * B))
    model.zero_grad()
    loss.backward()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    spec = {
        "cell": cell,
        "num_layers": num_layers,
        "hidden": H,
        "labels": labels.tolist(),
        "loss": loss.item(),
        "grads": {k: p.grad.tolist() for k, p in model.named_parameters()},
    }
    spec["tokens" if embedded else "inputs"] = x.tolist()
    return state, spec


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/torch"
    os.makedirs(out, exist_ok=True)
    seed = 0
    cases = [
        (cell, layers, embedded, torch.float64)
        for cell in ("rnn_tanh", "rnn_relu", "gru", "lstm")
        for layers in (1, 2)
        for embedded in (False, True)
    ]
    cases.append(("lstm", 2, False, torch.float32))
    for cell, layers, embedded, dtype in cases:
        seed += 1
        state, spec = case(cell, layers, embedded, dtype, seed)
        name = f"{cell}_l{layers}{'_emb' if embedded else ''}"
        name += "_f32" if dtype == torch.float32 else ""
        save_file(state, os.path.join(out, name + ".safetensors"))
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump(spec, f)
        print(name, spec["loss"])


if __name__ == "__main__":
    main()
