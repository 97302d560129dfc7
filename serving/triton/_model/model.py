"""Generic Triton python-backend model: runs the version's TorchScript ``model.pt``, or its
``model.onnx`` with onnxruntime (the CUDA provider first on a GPU instance, else the CPU's).

Owns: one model version inside Triton. Must not touch: rankserve (it is copied into each version).

Runs inside Triton's python stub, not in rankserve: it imports nothing of rankserve and reads no
environment. Dtypes come from Triton's own table, torch threads from the ``torch_threads``
parameter that rankserve writes into ``config.pbtxt`` at start-up.

Inputs come in through DLPack, never ``as_numpy()``: with NumPy 2 in the stub's environment,
``as_numpy()`` returned arrays that did not hold the request's values (every served score wrong,
on the GPU and the CPU alike; the stub is built against NumPy 1), which ``gpu_check``'s score check
found on the device image (numpy 2.5) and a NumPy 2 environment reproduces here.

Thin on purpose: ``initialize`` parses the config once and loads the module; ``execute`` merges
the requests Triton's dynamic batcher hands over, runs the module ONCE, and splits the result,
one response per request. Outputs go out through DLPack (``pb_utils.Tensor(name, ndarray)``
arrives empty with numpy 2), from host memory: a GPU instance copies its outputs to the host once
per execution rather than handing device tensors to the server (CUDA IPC between the stub and the
server). A malformed request fails alone. Each instance logs the device it runs on (``runs on``),
so a ``KIND_GPU`` instance that fell back to the CPU shows in Triton's log.
"""

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack


def _torch_dtype(triton_type):
    """The torch dtype of a config's ``TYPE_*`` (through NumPy's dtype object, never its arrays)."""
    return torch.from_numpy(np.empty(0, pb_utils.triton_string_to_numpy(triton_type))).dtype


class _Onnx:
    """An onnxruntime session called like the TorchScript module: torch tensors in, [B, k] tensors out."""

    def __init__(self, path, names, gpu):
        import onnxruntime as ort

        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        providers = [p for p in wanted if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.names = names

    def __call__(self, *tensors):
        feeds = {n: t.cpu().numpy() for n, t in zip(self.names, tensors, strict=True)}
        outs = [torch.from_numpy(o.reshape(o.shape[0], -1)) for o in self.session.run(None, feeds)]
        return outs[0] if len(outs) == 1 else tuple(outs)


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.inputs = [(t["name"], _torch_dtype(t["data_type"]), [int(d) for d in t["dims"]])
                       for t in cfg["input"]]
        self.outputs = [t["name"] for t in cfg["output"]]
        gpu = args.get("model_instance_kind") == "GPU" and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu")
        threads = cfg.get("parameters", {}).get("torch_threads", {}).get("string_value", "1")
        torch.set_num_threads(int(threads))
        folder = Path(args["model_repository"]) / args["model_version"]
        if (folder / "model.onnx").is_file():
            self.module = _Onnx(folder / "model.onnx", [name for name, _, _ in self.inputs], gpu)
            self.device = torch.device("cpu")  # onnxruntime takes host arrays; its provider places the work
        else:
            self.module = torch.jit.load(str(folder / "model.pt"), map_location=self.device).eval()
        line = (f"{args.get('model_name')} v{args['model_version']} runs on {self.device} "
                f"(instance kind {args.get('model_instance_kind')}, torch {torch.__version__}, numpy {np.__version__}, "
                f"cuda available {torch.cuda.is_available()})")
        logger = getattr(pb_utils, "Logger", None)
        if logger is not None:
            logger.log_info(line)
        else:
            print(line, flush=True)

    def _check(self, request):
        tensors = []
        for name, dtype, dims in self.inputs:
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is None:
                raise ValueError(f"missing input {name!r}")
            x = from_dlpack(t.to_dlpack())
            if x.dtype != dtype or x.dim() != len(dims) + 1 or list(x.shape[1:]) != dims:
                raise ValueError(f"input {name!r} is {x.dtype}{list(x.shape)}, expected {dtype}[-1, {dims}]")
            tensors.append(x)
        return tensors

    def execute(self, requests):
        responses = [None] * len(requests)
        good, parts = [], []
        for i, request in enumerate(requests):
            try:
                parts.append(self._check(request))
                good.append(i)
            except ValueError as err:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err)))
        if good:
            sizes = [p[0].shape[0] for p in parts]
            merged = [torch.cat([p[j] for p in parts]).to(self.device) for j in range(len(self.inputs))]
            with torch.inference_mode():
                out = self.module(*merged)
            outs = out if isinstance(out, (tuple, list)) else (out,)
            splits = [torch.split(o.detach().cpu().contiguous(), sizes) for o in outs]
            for k, i in enumerate(good):
                tensors = [pb_utils.Tensor.from_dlpack(name, to_dlpack(s[k].contiguous()))
                           for name, s in zip(self.outputs, splits, strict=True)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self):
        self.module = None
