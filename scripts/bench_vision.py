#!/usr/bin/env python3
"""Vision model timings through the engine the server runs (engine/vision.py LoadedVLM, admit and
step as its thread does), next to mlx_vlm.generate on the same model, prompt and image in one run:

- image preprocessing (decode + the processor's resize/normalise) and image encoding (the vision
  tower and projector, `get_input_embeddings`), per image;
- time to first token for a question about a new image, and for a second question about the same
  image (its prefix comes from the prompt cache, the vision tower does not run);
- decode tokens/s, ours and mlx_vlm.generate's.

Any mlx-vlm model folder works (--model-dir, e.g. a stored model's materialized folder or a
downloaded mlx-community repo); without one a tiny random-weight model of --family is built with
tests/support/tinyvlm.py. --shape tiny (the tests' size) shows per-token overheads, not a real
model's speed; --shape small (gemma3 and qwen2_5_vl: a SmolLM2-135M-shaped text model, 30 layers of
576, and a 4-layer tower on 224-pixel images, float32) makes decoding compute-bound:

    .venv/bin/python scripts/bench_vision.py [--model-dir DIR | --family gemma3 [--shape small]]
        [--image PATH] [--decode-tokens 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlxollama.engine.jobs import DoneEvent, GenerationJob, PromptSpec, TextEvent  # noqa: E402
from mlxollama.engine.vision import LoadedVLM  # noqa: E402
from mlxollama.options import Options  # noqa: E402

QUESTION = "Describe this image in detail."
FOLLOW_UP = "What colours does it have?"


def ask(vlm: LoadedVLM, messages: list[dict], options: Options) -> tuple[str, DoneEvent]:
    async def main():
        job = GenerationJob(PromptSpec(messages=messages), options)
        vlm.admit(job)
        while vlm.busy:
            vlm.step()
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        text, done = [], None
        while not job.events.empty():
            event = job.events.get_nowait()
            if isinstance(event, TextEvent):
                text.append(event.text)
            else:
                done = event
        if not isinstance(done, DoneEvent):
            raise SystemExit(f"generation failed: {done}")
        return "".join(text), done

    return asyncio.run(main())


def encode_times(vlm: LoadedVLM, image: bytes, runs: int) -> tuple[float, float]:
    """(preprocess seconds, encode seconds) per image, medians."""
    import mlx.core as mx

    pre, enc = [], []
    spec = PromptSpec(messages=[{"role": "user", "content": QUESTION, "images": [image]}])
    for _ in range(runs):
        t0 = time.perf_counter()
        vp = vlm._vision_prompt(spec, 1 << 20, cancelled=lambda: False)
        t1 = time.perf_counter()
        out = vlm.vlm.get_input_embeddings(mx.array([vp.tokens]), vp.pixel_values, mask=vp.mask, **vp.extra)
        mx.eval(out.inputs_embeds)
        t2 = time.perf_counter()
        pre.append(t1 - t0)
        enc.append(t2 - t1)
    return statistics.median(pre), statistics.median(enc)


class MlxVlmGenerate:
    """mlx_vlm.generate on the same model (loaded once); each call returns (prompt tokens/s,
    generation tokens/s, tokens). Its runs alternate with ours, so a busy machine weighs on both alike."""

    def __init__(self, folder: Path, image_path: Path, tokens: int):
        from mlx_vlm import apply_chat_template, load

        self.model, self.processor = load(str(folder))
        self.prompt = apply_chat_template(self.processor, self.model.config, QUESTION, num_images=1)
        self.image, self.tokens = str(image_path), tokens

    def __call__(self) -> tuple[float, float, int]:
        from mlx_vlm import generate

        r = generate(
            self.model, self.processor, self.prompt, image=[self.image], max_tokens=self.tokens, temperature=0.0
        )
        return float(r.prompt_tps), float(r.generation_tps), int(r.generation_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="an mlx-vlm model folder")
    ap.add_argument("--family", default="gemma3", help="tiny model family when no --model-dir is given")
    ap.add_argument("--shape", default="tiny", choices=("tiny", "small"), help="size of the built model")
    ap.add_argument("--image", type=Path, help="an image file (default: a generated one)")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-vision-"))
    folder = args.model_dir
    if folder is None:
        from tests.support.tinyvlm import build_tiny_vlm

        folder = build_tiny_vlm(args.family, work / args.family, shape=args.shape)
    if args.image is None:
        from tests.support.tinyvlm import make_image

        args.image = work / "image.png"
        args.image.write_bytes(make_image(0, size=(448, 448)))
    image = args.image.read_bytes()

    started = time.perf_counter()
    vlm = LoadedVLM(folder)
    print(f"model {folder} ({vlm.family}, {'batched' if vlm.batchable else 'one at a time'}), "
          f"loaded in {time.perf_counter() - started:.2f} s")  # fmt: skip
    pre, enc = encode_times(vlm, image, args.runs)
    print(f"image preprocessing   {pre * 1e3:9.1f} ms  (decode, resize, normalise, tokens)")
    print(f"image encoding        {enc * 1e3:9.1f} ms  (vision tower + projector)")

    # Greedy without Ollama's default repeat_penalty (1.1): mlx_vlm.generate applies none, so both do the same work
    options = Options(temperature=0, repeat_penalty=1.0, num_predict=args.decode_tokens)
    reference = MlxVlmGenerate(folder, args.image, args.decode_tokens)
    cold, warm, tps, theirs = [], [], [], []
    for run in range(args.runs):
        vlm.prompt_cache = type(vlm.prompt_cache)(max_size=16)  # a new image each run, in effect
        first = [{"role": "user", "content": QUESTION, "images": [image]}]
        answer, done = ask(vlm, first, options)
        cold.append(done.prompt_eval_duration / 1e9)
        tps.append(done.eval_count / max(done.eval_duration / 1e9, 1e-9))
        follow = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": FOLLOW_UP}]
        encoded = vlm.images_encoded
        _, again = ask(vlm, follow, Options(temperature=0, repeat_penalty=1.0, num_predict=1))
        warm.append(again.prompt_eval_duration / 1e9)
        if vlm.images_encoded != encoded:
            print("warning: the follow-up question encoded the image again")
        if run == 0:
            print(f"prompt tokens         {done.prompt_eval_count:9d}       follow-up {again.prompt_eval_count} "
                  f"({again.prompt_eval_cached_count} from the prompt cache)")  # fmt: skip
        theirs.append(reference())
    print(f"TTFT, new image       {statistics.median(cold) * 1e3:9.1f} ms")
    print(f"TTFT, cached image    {statistics.median(warm) * 1e3:9.1f} ms  (second question, same image)")
    print(f"decode, mlxollama     {statistics.median(tps):9.1f} tok/s  (runs: {', '.join(f'{t:.1f}' for t in tps)})")
    vlm.close()
    gen = [t[1] for t in theirs]
    print(f"decode, mlx_vlm       {statistics.median(gen):9.1f} tok/s  (runs: {', '.join(f'{t:.1f}' for t in gen)}; "
          f"{theirs[-1][2]} tokens; prompt {statistics.median(t[0] for t in theirs):.1f} tok/s)")  # fmt: skip


if __name__ == "__main__":
    main()
