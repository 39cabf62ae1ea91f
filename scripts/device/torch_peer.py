# The Python stack a user would otherwise pick (transformers + peft, AdamW), timed on the same shapes as
# `npm run bench -- model` / `-- engine`, so both sides run on one machine in one call. Usage:
#   python3 torch_peer.py OUT.json [cases...]     cases: block, smollm-cuda, tinyllama-cuda, llama7b-cuda, smollm-cpu16, smollm-cpu2
# PEER_PRECISION=fp32 (default: PyTorch's, float32 matmuls without TF32) | tf32 (allow_tf32 for matmuls, as onnxruntime's
# CUDA provider does by default) | bf16 (the base model's weights in bfloat16, LoRA factors in float32 as PEFT keeps
# them). Rows carry `precision`.
# PEER_PROFILE=1: after timing, one more CUDA step under torch.profiler; its kernels (self CUDA time, grouped by class
# as `bench profile` groups ours) are printed and written to OUT.json's rows as `kernels`.
import json, os, sys, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model

SMOLLM = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
              num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
LLAMA7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32)
TINYLLAMA = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4)
BLOCK = dict(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=1,
             num_attention_heads=4, num_key_value_heads=4)

PRECISION = os.environ.get('PEER_PRECISION', 'fp32')
assert PRECISION in ('fp32', 'tf32', 'bf16'), f'PEER_PRECISION={PRECISION}: expected fp32, tf32 or bf16'
torch.backends.cuda.matmul.allow_tf32 = PRECISION == 'tf32'
torch.backends.cudnn.allow_tf32 = PRECISION == 'tf32'

def client_step(name, shape, B, T, top, device, threads=None, steps=5, warm=2):
    if threads: torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape)).to(device)
    if PRECISION == 'bf16': model = model.to(torch.bfloat16)
    L = shape['num_hidden_layers']
    layers = list(range(L - top, L))
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                  target_modules=['q_proj', 'v_proj'], layers_to_transform=layers))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))
    ids = torch.randint(0, shape['vocab_size'], (B, T), device=device)
    def step():
        opt.zero_grad(set_to_none=True)
        peft_model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    for _ in range(warm): step()
    if device == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter(); step()
        if device == 'cuda': torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort(); med = times[len(times) // 2]
    kernels = profile_step(step) if device == 'cuda' and os.environ.get('PEER_PROFILE') == '1' else None
    row = dict(case=name, side='pytorch', device=device, precision=PRECISION, threads=torch.get_num_threads() if device == 'cpu' else None,
               batch=B, seq=T, ms_per_step=round(med * 1e3, 2), tokens_per_s=round(B * T / med, 1),
               peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20) if device == 'cuda' else None)
    print(json.dumps(row), flush=True)
    if kernels: row['kernels'] = kernels
    return row

KERNEL_CLASSES = [('matmul', ('gemm', 'cutlass', 'sm90_xmma', 'ampere_sgemm', 'sgemm', 'cublas')),
                  ('attention', ('fmha', 'flash', 'attention', 'efficient')), ('softmax', ('softmax',)),
                  ('reduction', ('reduce',)), ('copy', ('memcpy', 'memset', 'copy'))]

def profile_step(step):
    # Self CUDA time of each kernel over one step, summed by kernel name; ms.
    from torch.profiler import profile, ProfilerActivity
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step(); torch.cuda.synchronize()
    by_name = {}
    for e in prof.events():
        if e.device_type.name != 'CUDA': continue
        d = by_name.setdefault(e.name, [0.0, 0]); d[0] += e.time_range.elapsed_us() / 1e3; d[1] += 1
    classes = {}
    for name, (ms, n) in by_name.items():
        cls = next((c for c, keys in KERNEL_CLASSES if any(k in name.lower() for k in keys)), 'elementwise/other')
        classes[cls] = round(classes.get(cls, 0) + ms, 3)
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:15]
    out = dict(total_ms=round(sum(v[0] for v in by_name.values()), 3), classes=classes,
               top=[dict(kernel=k[:90], ms=round(v[0], 3), count=v[1]) for k, v in top])
    print(json.dumps(out, indent=1), flush=True)
    return out

CASES = {
    'block': lambda: client_step('block-d256-T128', BLOCK, 4, 128, 1, 'cuda'),
    'smollm-cuda': lambda: client_step('smollm135m-client-top2', SMOLLM, 4, 256, 2, 'cuda'),
    'tinyllama-cuda': lambda: client_step('tinyllama1.1b-client-top2', TINYLLAMA, 4, 512, 2, 'cuda'),
    'llama7b-cuda': lambda: client_step('llama2-7b-client-top2', LLAMA7B, 4, 512, 2, 'cuda', steps=3, warm=1),
    'smollm-cpu16': lambda: client_step('smollm135m-client-top2', SMOLLM, 4, 256, 2, 'cpu', 16, steps=3, warm=1),
    'smollm-cpu2': lambda: client_step('smollm135m-client-top2', SMOLLM, 4, 256, 2, 'cpu', 2, steps=2, warm=1),
}
out = sys.argv[1]
rows = [CASES[c]() for c in (sys.argv[2:] or list(CASES))]
json.dump(rows, open(out, 'w'), indent=1)
