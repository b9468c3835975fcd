"""Triton python-backend model that runs the exported `model.onnx` in onnxruntime.

Copied as `<model>/1/model.py` by triton_support.server.as_python_backend: the tritonserver that
PyPI nvidia-pytriton bundles has only the python backend, not the onnxruntime one, so the test
serves the exported file through this wrapper. It runs inside Triton's python backend stub (the
pytriton venv's interpreter), never in the test process.

Triton's dynamic batcher hands `execute` several requests at once; they are concatenated into
one onnxruntime run and the output split back per request, as the onnxruntime backend would.
"""

import json
import os

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        try:
            (output,) = self.session.run([self.output_name], {self.input_name: np.concatenate(arrays)})
        except Exception as exc:  # one failed run fails these requests, never the server
            error = pb_utils.TritonError(f"onnxruntime: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        output = np.asarray(output, dtype=np.float32).reshape(sum(sizes), -1)
        responses, start = [], 0
        for size in sizes:
            tensor = pb_utils.Tensor(self.output_name, output[start : start + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += size
        return responses

    def finalize(self):
        self.session = None
