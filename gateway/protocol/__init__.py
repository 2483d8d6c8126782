"""The request and response shapes of each REST dialect, and pure translations between them and the
services' messages: `models` (model management), `openai` (chat, completions, embeddings, tokens),
`common` (what the shapes share). No I/O here: routes parse and render, `gateway/serving.py` serves."""
