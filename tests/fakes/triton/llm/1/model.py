"""A Triton Python-backend model with the interface of TensorRT-LLM's `ensemble` model, generating real
tokens with llama-cpp-python from `model.gguf` beside this file (the tests put the tiny GGUF there).

Decoupled: with `stream` true every token is one response carrying the new text; otherwise one response
with the whole text. Every response also carries `num_input_tokens` / `num_output_tokens`. The request's
`stop_words` end the text (not included); a cancelled request stops at the next token.
"""

import os
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    return tensor.as_numpy().reshape(-1)[0]


def _strings(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    return [v.decode() if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1) if v]


class TritonPythonModel:
    def initialize(self, args):
        from llama_cpp import Llama

        here = os.path.join(args["model_repository"], args["model_version"])
        self.llm = Llama(model_path=os.path.join(here, "model.gguf"), n_ctx=512, n_threads=1, verbose=False)
        self.lock = threading.Lock()  # one Llama, one request at a time

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self._serve, args=(request,), daemon=True).start()
        return None  # decoupled: responses go through each request's sender

    def _response(self, text, n_in, n_out):
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("text_output", np.array([[text.encode()]], dtype=np.object_)),
                pb_utils.Tensor("num_input_tokens", np.array([[n_in]], dtype=np.int32)),
                pb_utils.Tensor("num_output_tokens", np.array([[n_out]], dtype=np.int32)),
            ]
        )

    def _serve(self, request):
        sender = request.get_response_sender()
        try:
            with self.lock:
                self._generate(request, sender)
        except Exception as exc:
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(f"generation failed: {exc}")),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            return
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _generate(self, request, sender):
        text_input = _strings(request, "text_input")
        prompt = text_input[0] if text_input else ""
        max_tokens = int(_scalar(request, "max_tokens", 16))
        stream = bool(_scalar(request, "stream", False))
        stops = _strings(request, "stop_words")
        self.llm.set_seed(int(_scalar(request, "random_seed", 0)))
        tokens = self.llm.tokenize(prompt.encode(), add_bos=True, special=True)
        done, text, emitted = [], "", 0
        for token in self.llm.generate(
            tokens,
            temp=float(_scalar(request, "temperature", 0.0)),
            top_k=int(_scalar(request, "top_k", 40)),
            top_p=float(_scalar(request, "top_p", 0.95)),
            repeat_penalty=float(_scalar(request, "repetition_penalty", 1.0)),
        ):
            if request.is_cancelled() or token == self.llm.token_eos() or len(done) >= max_tokens:
                break
            done.append(token)
            text = self.llm.detokenize(done, prev_tokens=tokens).decode(errors="ignore")
            cuts = [text.find(s) for s in stops if s in text]
            if cuts:
                text = text[: min(cuts)]
            if stream and len(text) > emitted:
                sender.send(self._response(text[emitted:], len(tokens), len(done)))
                emitted = len(text)
            if cuts:
                break
        if not stream:
            sender.send(self._response(text, len(tokens), len(done)))
