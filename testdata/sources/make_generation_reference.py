"""Greedy continuations of the gemma3 test model by llama.cpp, the reference the engine's
gemma3 forward pass is checked against (candle-transformers' quantized_gemma3 uses SiLU where
Gemma 3 uses GELU, so it cannot serve).

    python3 testdata/sources/make_generation_reference.py

Starts the llama-server built by scripts/llama-server.sh on 127.0.0.1 with f32 KV cache and no
flash attention, asks for 24 greedy tokens per prompt with the top two log-probabilities at
each step, and writes testdata/generate/gemma3_llamacpp.json. Models come from $HEARTH_MODELS.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ.get("HEARTH_MODELS", ROOT / "models")) / "gemma-3-270m-q4_k_m.gguf"
OUT = ROOT / "testdata" / "generate" / "gemma3_llamacpp.json"
STEPS = 24
PROMPTS = [
    "<start_of_turn>user\nName three primary colours.<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nWrite one sentence about rivers.<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nWas ist die Hauptstadt von Deutschland?<end_of_turn>\n<start_of_turn>model\n",
]


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def main():
    server = subprocess.run(
        [str(ROOT / "scripts" / "llama-server.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [server, "-m", str(MODEL), "-t", "2", "-c", "1024", "--host", "127.0.0.1",
         "--port", str(port), "-ctk", "f32", "-ctv", "f32", "-fa", "off", "--no-warmup"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            sys.exit("llama-server did not become healthy")
        cases = []
        for text in PROMPTS:
            ids = post(port, "/tokenize", {"content": text, "add_special": True, "parse_special": True})["tokens"]
            r = post(port, "/completion", {
                "prompt": ids, "n_predict": STEPS, "temperature": 0, "n_probs": 2,
                "cache_prompt": False, "return_tokens": True,
            })
            steps = [
                [[p["id"], p["logprob"]] for p in step["top_logprobs"]]
                for step in r["completion_probabilities"]
            ]
            cases.append({"prompt": text, "prompt_ids": ids, "output_ids": r["tokens"], "top2": steps})
        OUT.write_text(json.dumps({"model": MODEL.name, "steps": STEPS, "cases": cases}, indent=1) + "\n")
        print(f"wrote {OUT}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
