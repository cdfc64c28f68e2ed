#!/usr/bin/env python3
"""The Python stack's equivalent of `peft-bench train-step`, for `--compare-python FILE.json`.

Same model and step as bench/PeftSharp.Bench/Benchmarks/TrainStepBench.cs: a random-init Llama (hidden 512,
8 layers, 8 heads, 8 kv heads, intermediate 1376, vocab 8192, untied), batch 4 x 256 random token ids, labels =
inputs, one optimizer step = forward + backward + clip to 1.0 + AdamW (lr 1e-4) + zero_grad. LoRA: r=16, alpha 32 on
every linear layer but lm_head (peft's "all-linear"). bf16: the base model in bfloat16 under CPU autocast, the
adapters in float32 (what transformers' Trainer with bf16=True and peft do).

    pip install torch transformers peft
    python bench/python/train_step.py --mode lora --precision fp32 --threads 2 --out python-lora-fp32.json
    dotnet run -c Release --project bench/PeftSharp.Bench -- train-step --mode lora --precision fp32 \
        --compare-python python-lora-fp32.json

Run both on the same idle machine with the same thread count.
"""
import argparse
import json
import platform
import resource
import statistics
import time


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["lora", "full"], default="lora")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--out", required=True, help="JSON file for --compare-python")
    a = ap.parse_args()

    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False,
                         max_position_embeddings=512)
    model = LlamaForCausalLM(config)
    bf16 = a.precision == "bf16"
    stack = f"transformers {transformers.__version__} + torch {torch.__version__}"
    if a.mode == "lora":
        import peft
        from peft import LoraConfig, get_peft_model
        if bf16:
            model = model.to(torch.bfloat16)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
        stack = f"transformers {transformers.__version__} + peft {peft.__version__} + torch {torch.__version__}"
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, foreach=False)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 8192, (a.batch, a.seq), generator=g)

    times = []
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)

    median = statistics.median(times)
    row = {
        "mode": a.mode, "precision": a.precision,
        "s/step (median)": median, "s/step (min)": min(times),
        "tokens/s": a.batch * a.seq / median,
        "peak RSS MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    doc = {
        "benchmark": "train-step", "stack": stack,
        "machine": {"cpu": cpu_model(), "threads": torch.get_num_threads(),
                    "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "config": {"steps": a.steps, "warmup": a.warmup, "batch": a.batch, "seq": a.seq},
        "rows": [row],
    }
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
