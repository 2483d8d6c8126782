"""A Triton Python-backend model with the interface of TensorRT-LLM's `ensemble` model, generating real
tokens with llama-cpp-python from `model.gguf` beside this file (the tests put the tiny GGUF there).

Decoupled: with `stream` true every token is one response carrying the new text; otherwise one response
with the whole text. The request's `stop_words` end the text (not included); a cancelled request stops at
the next token. It answers only the outputs its config declares, so one model file serves configs of
several ensemble versions:
- `num_input_tokens` / `num_output_tokens` on every response, or, where the config has the
  `return_num_input_tokens` / `return_num_output_tokens` inputs (current ensembles), only when asked;
- with `return_log_probs`, `output_log_probs` (the new tokens' log-probabilities, [batch, beam, tokens])
  and `cum_log_probs`: the model's real log-softmax of each sampled token;
- with `guided_decoding_guide_type` "json" or "json_schema" (the schema in `guided_decoding_guide`), the
  JSON a guided decoder would force instead of the model's text, a few characters a token, each with
  log-prob GUIDED_LOGPROB; "regex" and "ebnf_grammar" are refused (this fake cannot follow them), other
  types too, as TensorRT-LLM refuses them.
"""

import json
import os
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

GUIDED_LOGPROB = -0.25
GUIDED_PIECE = 3  # characters a token of guided output


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


def instance(schema):
    """A value valid for a (simple) JSON schema: what a guided decoder lets through."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if kind == "object":
        return {key: instance(sub) for key, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [instance(schema.get("items") or {})]
    return {"string": "guided", "integer": 42, "number": 0.5, "boolean": True}.get(kind)


class TritonPythonModel:
    def initialize(self, args):
        from llama_cpp import Llama

        here = os.path.join(args["model_repository"], args["model_version"])
        config = json.loads(args["model_config"])
        self.inputs = {i["name"] for i in config.get("input", [])}
        self.outputs = {o["name"] for o in config.get("output", [])}
        # logits_all keeps every step's logits: the log-probs of the sampled tokens are read from them.
        self.llm = Llama(
            model_path=os.path.join(here, "model.gguf"),
            n_ctx=512,
            n_threads=1,
            logits_all=True,
            verbose=False,
        )
        self.lock = threading.Lock()  # one Llama, one request at a time

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self._serve, args=(request,), daemon=True).start()
        return None  # decoupled: responses go through each request's sender

    def _wants(self, request, output):
        """Whether `output` goes into the responses: declared, and asked for where the config lets ask."""
        flag = {
            "num_input_tokens": "return_num_input_tokens",
            "num_output_tokens": "return_num_output_tokens",
        }
        flag.update(dict.fromkeys(("output_log_probs", "cum_log_probs"), "return_log_probs"))
        if output not in self.outputs:
            return False
        asked = flag.get(output)
        return asked is None or asked not in self.inputs or bool(_scalar(request, asked, False))

    def _response(self, request, text, n_in, n_out, logprobs, cumulative):
        tensors = [pb_utils.Tensor("text_output", np.array([[text.encode()]], dtype=np.object_))]
        values = {
            "num_input_tokens": np.array([[n_in]], dtype=np.int32),
            "num_output_tokens": np.array([[n_out]], dtype=np.int32),
            "output_log_probs": np.array([[logprobs]], dtype=np.float32).reshape(1, 1, len(logprobs)),
            "cum_log_probs": np.array([[cumulative]], dtype=np.float32),
        }
        tensors += [
            pb_utils.Tensor(name, value) for name, value in values.items() if self._wants(request, name)
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

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

    def _tokens(self, request, prompt_tokens, max_tokens):
        """(token text, log-prob) pairs as they are generated: the model's, or a guided decoder's."""
        guide_type = (_strings(request, "guided_decoding_guide_type") or [""])[0]
        if guide_type:
            if guide_type not in ("json", "json_schema"):
                raise ValueError(f"guided decoding guide type {guide_type!r} is not supported here")
            guide = (_strings(request, "guided_decoding_guide") or ["{}"])[0]
            document = json.dumps(
                instance(json.loads(guide)) if guide_type == "json_schema" else {"answer": 1}
            )
            pieces = [document[i : i + GUIDED_PIECE] for i in range(0, len(document), GUIDED_PIECE)]
            for piece in pieces[:max_tokens]:
                if request.is_cancelled():
                    return
                yield piece, GUIDED_LOGPROB
            return
        seed = _scalar(request, "seed", _scalar(request, "random_seed", 0))
        self.llm.set_seed(int(seed))
        done = []
        for token in self.llm.generate(
            prompt_tokens,
            temp=float(_scalar(request, "temperature", 0.0)),
            top_k=int(_scalar(request, "top_k", 40)),
            top_p=float(_scalar(request, "top_p", 0.95)),
            repeat_penalty=float(_scalar(request, "repetition_penalty", 1.0)),
        ):
            if request.is_cancelled() or token == self.llm.token_eos() or len(done) >= max_tokens:
                return
            # The logits the token was sampled from are the last row evaluated.
            logits = self.llm.scores[self.llm.n_tokens - 1]
            logprob = float(self.llm.logits_to_logprobs(logits)[token])
            before = self.llm.detokenize(done, prev_tokens=prompt_tokens).decode(errors="ignore")
            done.append(token)
            after = self.llm.detokenize(done, prev_tokens=prompt_tokens).decode(errors="ignore")
            yield after[len(before) :], logprob

    def _generate(self, request, sender):
        text_input = _strings(request, "text_input")
        prompt = text_input[0] if text_input else ""
        max_tokens = int(_scalar(request, "max_tokens", 16))
        stream = bool(_scalar(request, "stream", False))
        stops = _strings(request, "stop_words")
        tokens = self.llm.tokenize(prompt.encode(), add_bos=True, special=True)
        text, emitted, logprobs, reported = "", 0, [], 0
        for piece, logprob in self._tokens(request, tokens, max_tokens):
            logprobs.append(logprob)
            text += piece
            cuts = [text.find(s) for s in stops if s in text]
            if cuts:
                text = text[: min(cuts)]
            if stream and len(text) > emitted:
                # A streamed response carries the tokens generated since the previous one, as TensorRT-LLM's.
                new, reported = logprobs[reported:], len(logprobs)
                count = len(logprobs)
                sender.send(self._response(request, text[emitted:], len(tokens), count, new, sum(logprobs)))
                emitted = len(text)
            if cuts:
                break
        if not stream:
            sender.send(self._response(request, text, len(tokens), len(logprobs), logprobs, sum(logprobs)))
