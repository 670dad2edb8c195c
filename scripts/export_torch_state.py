#!/usr/bin/env python3
"""Writes examples/data/torch_state.safetensors: the state of a PyTorch LayerNorm(2, 4) and a
BatchNorm2d(3) trained for three steps with momentum=None (a cumulative average, so that
num_batches_tracked matters), plus an input and PyTorch's eval-mode output for each and the running
statistics after one more training step, so that examples/load_torch_state.cpp can check that normkit,
loaded with that state, gives the same outputs and continues the same way.

    /usr/bin/python3 scripts/export_torch_state.py      (needs Debian's python3-torch)

safetensors is written by hand (the format is an 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets}}, then the raw little-endian data), so nothing but torch is needed.
"""
import json
import os
import struct

import torch


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        dtype = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}[t.dtype]
        data = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"producer": "normkit scripts/export_torch_state.py", "torch": torch.__version__}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format allows trailing spaces; keeps the data 8-aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    torch.manual_seed(0)
    ln = torch.nn.LayerNorm((2, 4))
    bn = torch.nn.BatchNorm2d(3, momentum=None)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(2, 4) * 0.5 + 1)
        ln.bias.copy_(torch.randn(2, 4) * 0.1)
        bn.weight.copy_(torch.rand(3) + 0.5)
        bn.bias.copy_(torch.randn(3))
    bn.train()
    for step in range(3):
        bn(torch.randn(4, 3, 5, 5) * (step + 1) + step)
    bn.eval()
    ln_input = torch.randn(3, 2, 4) * 3 + 1
    bn_input = torch.randn(2, 3, 5, 5) * 2 + 0.5
    with torch.no_grad():
        tensors = {f"ln.{k}": v.clone() for k, v in ln.state_dict().items()}
        tensors.update({f"bn.{k}": v.clone() for k, v in bn.state_dict().items()})
        tensors["ln.input"] = ln_input
        tensors["ln.output"] = ln(ln_input)
        tensors["bn.input"] = bn_input
        tensors["bn.output"] = bn(bn_input)
        # One more training step from the saved state: its running statistics depend on
        # num_batches_tracked (the factor is 1/4), so they show the counter was restored too.
        train_input = torch.randn(4, 3, 5, 5) + 2
        bn.train()
        bn(train_input)
        tensors["bn.train_input"] = train_input
        tensors["bn.running_mean_after"] = bn.running_mean.clone()
        tensors["bn.running_var_after"] = bn.running_var.clone()
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "data", "torch_state.safetensors")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_safetensors(out, tensors)
    print(f"wrote {os.path.normpath(out)}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in tensors.items()))


if __name__ == "__main__":
    main()
