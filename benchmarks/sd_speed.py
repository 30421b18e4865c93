"""Stable Diffusion speed and memory with random full-size weights (nothing downloaded).

    python -m benchmarks.sd_speed                      # 512x512, every PRECISION/OFFLOAD here
    python -m benchmarks.sd_speed --SIZE=256 --STEPS=2

Random full-size weights are first written (by a child process) as one original-layout fp32
`.safetensors` checkpoint in a temporary folder, as the published v1.5 file is; the project's
rows read it as the run script does. For each precision and offload mode available on this
machine: seconds to load, seconds per UNet step with guidance (a batch of 2: prompt and
negative prompt), the VAE decode time and the peak resident memory (VmHWM), each configuration
in its own process (so that peaks are its own). With diffusers installed (a benchmark-only
extra, never imported by the project's code) diffusers' StableDiffusionPipeline follows, built
with random weights of the same configuration (it cannot read a single file offline); its
model offload needs an accelerator, so on a CPU it has the offload "none" rows only. Prints a
markdown table and writes saved_plots/benchmarks/sd_speed.json.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from utils import files
from utils.config import resolve_constants
from utils.device import bf16_is_fast
from utils.cli import run_cli

SIZE = 512  # image height and width (latents SIZE / 8)
STEPS = 3  # UNet steps timed (after one warm-up step)
PRECISIONS = ("fp32", "bf16")  # which to try: auto, fp32, bf16, fp16 (CUDA)
OFFLOADS = ("none", "model")  # which offload modes to try
PEER = True  # also time diffusers' pipeline when it is installed
SAVE_ROOT = "."  # saved_plots/benchmarks/ is created here


def _write_weights(folder: str) -> None:
    """Random full-size components as one fp32 original-layout checkpoint, and a stand-in
    vocabulary (run in a child process, so that no row's peak memory includes it)."""
    from safetensors.torch import save_file

    from models.clip import CLIPTextEncoder
    from models.sd_unet import SDUNet
    from models.sd_vae import SDVAE
    from models.sd_weights import (TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, to_layout,
                                   unet_key_table, vae_key_table)
    unet, vae = SDUNet(), SDVAE()
    state = {TEXT_PREFIX + k: v for k, v in CLIPTextEncoder().state_dict().items()}
    state.update(to_layout(unet, unet_key_table(unet), 0, UNET_PREFIX))
    state.update(to_layout(vae, vae_key_table(vae), 0, VAE_PREFIX))
    save_file({k: v.contiguous() for k, v in state.items()}, f"{folder}/model.safetensors")
    vocab = Path(folder) / "tokenizer"
    vocab.mkdir()
    (vocab / "vocab.json").write_text(json.dumps(
        {"a": 0, "a</w>": 1, "b</w>": 2, "ab</w>": 3, "<|startoftext|>": 49406,
         "<|endoftext|>": 49407}))
    (vocab / "merges.txt").write_text("#version: 0.2\na b</w>\n")


def _ours(folder: str, size: int, steps: int, precision: str, offload: str) -> dict:
    """One configuration of the project's pipeline (run in a child process)."""
    import time

    from train.sd_loading import load_components
    from train.stable_diffusion import StableDiffusion, peak_memory_mb, sd_device, sd_dtype
    device = sd_device("auto")
    dtype = sd_dtype(precision, device)
    started = time.perf_counter()
    parts = load_components(f"{folder}/model.safetensors", f"{folder}/tokenizer", dtype=dtype,
                            lazy=offload == "model" and device.type == "cpu")
    pipe = StableDiffusion(parts, device, dtype, offload)
    load_s = time.perf_counter() - started
    pipe.generate("a", steps=1, height=size, width=size, sampler="ddim")  # warm-up
    started = time.perf_counter()
    result = pipe.generate("a", steps=steps, height=size, width=size, sampler="ddim")
    return {"pipeline": "ours", "precision": str(pipe.dtype).replace("torch.", ""),
            "offload": offload, "load_s": load_s,
            "unet_s_per_step": result.seconds["unet_per_step"],
            "vae_decode_s": result.seconds["vae_decode"],
            "total_s": time.perf_counter() - started, **peak_memory_mb(device)}


def _peer(folder: str, size: int, steps: int, precision: str, offload: str) -> dict:
    """diffusers' pipeline on random full-size weights (v1.5's configuration)."""
    import time

    import diffusers
    import transformers
    from train.stable_diffusion import peak_memory_mb, sd_device, sd_dtype
    device = sd_device("auto")
    dtype = sd_dtype(precision, device)
    started = time.perf_counter()
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    unet = diffusers.UNet2DConditionModel(sample_size=size // 8, cross_attention_dim=768,
                                          attention_head_dim=8)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)

    tokenizer = transformers.CLIPTokenizer(f"{folder}/tokenizer/vocab.json",
                                           f"{folder}/tokenizer/merges.txt",
                                           pad_token="<|endoftext|>", model_max_length=77)
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
        scheduler=diffusers.DDIMScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False).to(device, dtype)
    if offload == "model":
        pipe.enable_model_cpu_offload()
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - started
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
            "offload": offload, "load_s": load_s, "unet_s_per_step": unet_s,
            "vae_decode_s": time.perf_counter() - decode_started,
            "total_s": time.perf_counter() - started, **peak_memory_mb(device)}


def _child(which: str, *args) -> dict:
    code = (f"import json, sys; from benchmarks.sd_speed import {which}; "
            f"print('RESULT' + json.dumps({which}(*{args!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    if done.returncode or not lines:
        return {"pipeline": which.strip("_"), "precision": args[-2], "offload": args[-1],
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
    cpu_only = not torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as folder:
        _child("_write_weights", folder)
        rows = [_child(w, folder, const.SIZE, const.STEPS, p, o) for p in precisions
                for o in const.OFFLOADS for w in which
                if not (w == "_peer" and o == "model" and cpu_only)]
    print(f"| pipeline | precision | offload | load s | UNet s/step (CFG, {const.SIZE}px) | "
          f"VAE decode s | peak RSS MB |\n|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['pipeline']} | {r['precision']} | {r['offload']} | failed: "
                  f"{r['error']} | | | |")
        else:
            print(f"| {r['pipeline']} | {r['precision']} | {r['offload']} | {r['load_s']:.1f} | "
                  f"{r['unet_s_per_step']:.2f} | {r['vae_decode_s']:.2f} | "
                  f"{r['peak_rss_mb']:.0f} |")
    out = Path(const.SAVE_ROOT) / "saved_plots" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / "sd_speed.json", {"constants": vars(const), "rows": rows})
    return rows


if __name__ == "__main__":
    run_cli(main)
