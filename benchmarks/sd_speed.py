"""Stable Diffusion speed and memory with random full-size weights (nothing downloaded).

    python -m benchmarks.sd_speed                      # 512x512, every PRECISION/OFFLOAD here
    python -m benchmarks.sd_speed --SIZE=256 --STEPS=2

For each precision and offload mode available on this machine: seconds per UNet step with
guidance (a batch of 2: prompt and negative prompt), the VAE decode time and the peak resident
memory, each configuration in its own process (so that peaks are its own). With diffusers
installed (a benchmark-only extra, never imported by the project's code) the same rows for
diffusers' StableDiffusionPipeline on the same random weights follow. Prints a markdown table
and writes saved_plots/benchmarks/sd_speed.json.
"""
import json
import subprocess
import sys
from pathlib import Path

import torch

from utils.config import resolve_constants
from utils.device import bf16_is_fast
from utils.errors import run_cli

SIZE = 512  # image height and width (latents SIZE / 8)
STEPS = 3  # UNet steps timed (after one warm-up step)
PRECISIONS = ("auto",)  # which to try: auto, fp32, bf16 (fp16 on CUDA)
OFFLOADS = ("none", "model")  # which offload modes to try
PEER = True  # also time diffusers' pipeline when it is installed
SAVE_ROOT = "."  # saved_plots/benchmarks/ is created here


def _ours(size: int, steps: int, precision: str, offload: str) -> dict:
    """One configuration of the project's pipeline (run in a child process)."""
    import time

    from models.clip import CLIPTextEncoder
    from models.sd_unet import SDUNet
    from models.sd_vae import SDVAE
    from train.sd_loading import Components
    from train.stable_diffusion import StableDiffusion, peak_memory_mb, sd_device, sd_dtype
    from utils.clip_tokenizer import CLIPTokenizer
    device = sd_device("auto")
    tokenizer = CLIPTokenizer({"<|startoftext|>": 49406, "<|endoftext|>": 49407, "a</w>": 1},
                              [])
    parts = Components(tokenizer, CLIPTextEncoder().eval(), SDUNet().eval(), SDVAE().eval())
    pipe = StableDiffusion(parts, device, sd_dtype(precision, device), offload)
    pipe.generate("a", steps=1, height=size, width=size, sampler="ddim")  # warm-up
    started = time.perf_counter()
    result = pipe.generate("a", steps=steps, height=size, width=size, sampler="ddim")
    return {"pipeline": "ours", "precision": str(pipe.dtype).replace("torch.", ""),
            "offload": offload, "unet_s_per_step": result.seconds["unet_per_step"],
            "vae_decode_s": result.seconds["vae_decode"],
            "total_s": time.perf_counter() - started, **peak_memory_mb(device)}


def _peer(size: int, steps: int, precision: str, offload: str) -> dict:
    """diffusers' pipeline on random full-size weights (v1.5's configuration)."""
    import time

    import diffusers
    import transformers
    from train.stable_diffusion import peak_memory_mb, sd_device, sd_dtype
    device = sd_device("auto")
    dtype = sd_dtype(precision, device)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    unet = diffusers.UNet2DConditionModel(sample_size=size // 8, cross_attention_dim=768,
                                          attention_head_dim=8)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)

    class Tokenizer:  # a stand-in with the interface the pipeline calls
        model_max_length = 77

        def __call__(self, texts, **kwargs):
            ids = torch.full((len(texts), 77), 49407)
            ids[:, 0] = 49406
            return type("T", (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})

        def batch_decode(self, *a, **k):
            return [""]

    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=Tokenizer(), unet=unet,
        scheduler=diffusers.DDIMScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False).to(device, dtype)
    if offload == "model":
        pipe.enable_model_cpu_offload()
    pipe.set_progress_bar_config(disable=True)
    timings = {}
    unet.register_forward_pre_hook(lambda m, a: timings.setdefault("starts", []).append(
        time.perf_counter()))
    pipe("a", num_inference_steps=1, height=size, width=size, output_type="latent")
    timings.clear()
    started = time.perf_counter()
    latents = pipe("a", num_inference_steps=steps, height=size, width=size,
                   output_type="latent").images
    unet_s = (time.perf_counter() - timings["starts"][0]) / steps
    decode_started = time.perf_counter()
    with torch.no_grad():
        vae.decode(latents / 0.18215)
    return {"pipeline": "diffusers", "precision": str(dtype).replace("torch.", ""),
            "offload": offload, "unet_s_per_step": unet_s,
            "vae_decode_s": time.perf_counter() - decode_started,
            "total_s": time.perf_counter() - started, **peak_memory_mb(device)}


def _child(which: str, size: int, steps: int, precision: str, offload: str) -> dict:
    code = (f"import json, sys; from benchmarks.sd_speed import {which}; "
            f"print('RESULT' + json.dumps({which}({size}, {steps}, {precision!r}, "
            f"{offload!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    if done.returncode or not lines:
        return {"pipeline": which.strip("_"), "precision": precision, "offload": offload,
                "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1][len("RESULT"):])


def main(argv=None) -> list[dict]:
    const = resolve_constants(globals(), argv)
    precisions = [p for p in const.PRECISIONS if p != "bf16" or bf16_is_fast(torch.device(
        "cuda" if torch.cuda.is_available() else "cpu"))]
    which = ["_ours"]
    if const.PEER:
        import importlib.util
        if importlib.util.find_spec("diffusers") and importlib.util.find_spec("transformers"):
            which.append("_peer")
        else:
            print("diffusers is not installed: only the project's rows")
    rows = [_child(w, const.SIZE, const.STEPS, p, o) for p in precisions
            for o in const.OFFLOADS for w in which]
    print(f"| pipeline | precision | offload | UNet s/step (CFG, {const.SIZE}px) | "
          f"VAE decode s | peak RSS MB |\n|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['pipeline']} | {r['precision']} | {r['offload']} | failed: "
                  f"{r['error']} | | |")
        else:
            print(f"| {r['pipeline']} | {r['precision']} | {r['offload']} | "
                  f"{r['unet_s_per_step']:.2f} | {r['vae_decode_s']:.2f} | "
                  f"{r['peak_rss_mb']:.0f} |")
    out = Path(const.SAVE_ROOT) / "saved_plots" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sd_speed.json").write_text(json.dumps({"constants": vars(const), "rows": rows},
                                                  indent=2, default=str))
    return rows


if __name__ == "__main__":
    run_cli(main)
