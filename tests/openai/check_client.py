"""hearth's OpenAI-compatible endpoints, driven by the official `openai` Python client.

Usage: check_client.py BASE_URL API_KEY CHAT_MODEL EMBEDDING_MODEL
Exits non-zero (with the failing check) on any mismatch.
"""
import math
import sys

import openai

base, key, chat_model, embed_model = sys.argv[1:5]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


ids = [m.id for m in client.models.list()]
check(chat_model in ids and embed_model in ids, f"models.list has {chat_model} and {embed_model}: {ids}")

messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
r = client.chat.completions.create(model=chat_model, messages=messages, max_tokens=12, temperature=0)
text = r.choices[0].message.content
check(r.object == "chat.completion" and r.choices[0].message.role == "assistant", "chat completion shape")
check(isinstance(text, str) and text.strip() != "", f"non-empty answer: {text!r}")
check(r.choices[0].finish_reason in ("stop", "length"), f"finish_reason {r.choices[0].finish_reason}")
check(r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage adds up")

stream = client.chat.completions.create(
    model=chat_model, messages=messages, max_tokens=12, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
pieces, finish, usage = [], None, None
for chunk in stream:
    check(chunk.object == "chat.completion.chunk", "chunk object") if not pieces else None
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
check(len(pieces) >= 2, f"streamed in pieces: {pieces}")
check("".join(pieces) == text, f"stream equals the non-streamed greedy answer: {''.join(pieces)!r} vs {text!r}")
check(finish in ("stop", "length"), f"stream finish_reason {finish}")
check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, "stream usage (include_usage)")

r = client.chat.completions.create(
    model=chat_model, messages=messages, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3,
)
lp = r.choices[0].logprobs.content
check(r.choices[0].message.content == text, "asking for logprobs leaves the greedy answer as it was")
check(len(lp) == r.usage.completion_tokens, f"one logprobs entry per generated token: {len(lp)}")
check(all(len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token and t.logprob <= 0 for t in lp),
      "greedy tokens head their top_logprobs, log-probabilities <= 0")
check("".join(t.token for t in lp).startswith(text), "the tokens spell the answer")
check(all(bytes(t.bytes).decode("utf-8", "replace") == t.token for t in lp), "bytes are the token's UTF-8")
stream = client.chat.completions.create(
    model=chat_model, messages=messages, max_tokens=12, temperature=0, stream=True, logprobs=True,
)
streamed = [t for chunk in stream for c in chunk.choices if c.logprobs and c.logprobs.content for t in c.logprobs.content]
check([t.token for t in streamed] == [t.token for t in lp], "streamed logprobs name the same tokens")
try:
    client.chat.completions.create(model=chat_model, messages=messages, max_tokens=4, top_logprobs=2)
    check(False, "top_logprobs without logprobs refused")
except openai.BadRequestError as err:
    check("top_logprobs" in str(err), "top_logprobs without logprobs: 400 naming the field")

e = client.embeddings.create(model=embed_model, input=["The cat sat on the mat.", "A feline rested on the rug.", "Quarterly tax filing deadlines"])
vecs = [d.embedding for d in e.data]
check(len(vecs) == 3 and all(len(v) == 384 for v in vecs), "three 384-dimensional embeddings (base64 by default)")
norm = math.sqrt(sum(x * x for x in vecs[0]))
check(abs(norm - 1.0) < 1e-3, f"unit length: {norm}")
dot = lambda a, b: sum(x * y for x, y in zip(a, b))
check(dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2]) + 0.2, "similar sentences are closer")
f = client.embeddings.create(model=embed_model, input="The cat sat on the mat.", encoding_format="float")
check(max(abs(a - b) for a, b in zip(f.data[0].embedding, vecs[0])) < 1e-6, "float and base64 encodings agree")
check(e.usage.prompt_tokens > 0, "embedding usage")

try:
    client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=4)
    check(False, "unknown model refused")
except openai.NotFoundError as err:
    check(err.status_code == 404, "unknown model: 404 NotFoundError")
try:
    client.chat.completions.create(model=chat_model + ":no-adapter", messages=messages, max_tokens=4)
    check(False, "unknown adapter refused")
except openai.NotFoundError:
    check(True, "unknown adapter: 404")
try:
    client.chat.completions.create(model=chat_model, messages=messages, max_tokens=4, temperature=-3)
    check(False, "bad temperature refused")
except openai.BadRequestError as err:
    check("temperature" in str(err), "bad temperature: 400 naming the field")
bad = openai.OpenAI(base_url=base + "/v1", api_key="hth_0123456789ab_nope", max_retries=0)
try:
    bad.models.list()
    check(False, "wrong key refused")
except openai.AuthenticationError:
    check(True, "wrong key: 401 AuthenticationError")
print("all OpenAI client checks passed")
