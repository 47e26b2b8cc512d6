"""A loaded vision-language model (mlx-vlm) on its engine thread.

The request's images are decoded and preprocessed here, on the model's engine thread (never on the
event loop), with mlx-vlm's own processor; the vision tower's features are merged into the prompt's
embeddings by the model's `get_input_embeddings`, as `mlx_vlm.generate` merges them, and that
embedding prefill fills an mlx-lm KV cache. What follows is text: the sequence then decodes through
the same machinery text models use (llm.py: sampling, stops, logprobs, `format`, tools, thinking,
cancellation), the language model wrapped so mlx-lm's generators can call it.

Batching: a family whose decode step depends only on the tokens and the cache (gemma3, mistral3 and
llava: plain RoPE at the cache's offset) joins the continuous batch with its prefilled cache, as a
speculative stream is handed over (speculative.py). Qwen2-VL and Qwen2.5-VL place text after an
image at position offset + rope_delta (M-RoPE), a per-sequence number the batch cannot carry (mlx-vlm
keeps it on the model object), so they run one sequence at a time on their own thread; other models
are not blocked by it.

Prompt cache: an image's placeholder tokens are the same for every picture of one size, so the cache
key replaces them with a value derived from the images' bytes. A second question about the same
image finds the cached prefix and the vision tower does not run again (`images_encoded` counts).
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import (
    KVCache,
    RotatingKVCache,
    can_trim_prompt_cache,
    make_prompt_cache,
    trim_prompt_cache,
)

from ..options import Options
from .jobs import DoneEvent, EngineError, GenerationJob, PromptSpec
from .llm import EngineSettings, LoadedLLM, _Active, _event, _requested_fault, generation_limit
from .prompt import PromptCancelled, build_prompt_tokens, render_chat
from .sampling import make_request_processors, make_request_sampler, token_logprobs

log = logging.getLogger("mlxollama.engine")

# Families whose batched answers were shown equal to the same request alone (tests/e2e/test_vision.py).
BATCHED_FAMILIES = frozenset({"gemma3", "mistral3", "llava"})
# Text models that cannot share a batch: mlx-vlm's Ministral3 scales attention (llama-4 scaling) by
# the first row's cache offset, which is wrong for every other row of a batch.
UNBATCHED_TEXT_MODELS = frozenset({"ministral3"})
# Language models that place tokens with M-RoPE: positions are offset + rope_delta after an image.
MROPE_FAMILIES = frozenset({"qwen2_vl", "qwen2_5_vl"})

# Ollama's runner text when an image cannot be decoded (ollamarunner: NewSequence -> inputs ->
# image.Decode); answered as the client's bad input.
UNDECODABLE_IMAGE = "Failed to create new sequence: failed to process inputs: image: unknown format"


# What mlx-vlm's prepare_inputs passes a processor for its tokenizer.
_TOKENIZER_KWARGS = frozenset({"padding", "padding_side", "add_special_tokens", "truncation", "max_length"})


class ImageProcessorKwargs:
    """mlx-vlm 0.7.10's LlavaProcessor forwards every keyword it is given, the tokenizer's `padding=`
    included, to its image processor, and transformers 5's image processors refuse unknown keywords:
    every llava image request failed. This stands in for the image processor and drops the
    tokenizer's keywords (the fix upstream needs in LlavaProcessor.__call__)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, images, *args, **kwargs):
        return self.inner(images, *args, **{k: v for k, v in kwargs.items() if k not in _TOKENIZER_KWARGS})


def _fix_processor(family: str, processor) -> None:
    if family == "llava" and not isinstance(
        getattr(processor, "image_processor", None), (type(None), ImageProcessorKwargs)
    ):
        processor.image_processor = ImageProcessorKwargs(processor.image_processor)


CONTEXT_WITH_IMAGE = (
    "this context holds an image, which cannot be continued from its tokens; "
    "send the conversation with its images to /api/chat instead"
)


def _kv_caches(language_model) -> list:
    """mlx-lm caches in the shape the language model asks for: mlx-lm's batch generator merges only
    its own cache types; anything else is kept (and the model then cannot batch)."""
    from mlx_vlm.models import cache as vlm_cache

    made = language_model.make_cache() if hasattr(language_model, "make_cache") else None
    if made is None:
        return [KVCache() for _ in language_model.layers]
    out = []
    for c in made:
        if type(c) is vlm_cache.RotatingKVCache:
            out.append(RotatingKVCache(max_size=c.max_size, keep=c.keep))
        elif type(c) is vlm_cache.KVCache:
            out.append(KVCache())
        else:
            out.append(c)
    return out


class TextDecoder(nn.Module):
    """The vision model's language model as mlx-lm's generators call a model: tokens and a cache
    in, logits out. It holds the whole mlx-vlm model (so its parameters, dtype casts and memory
    count include the vision tower). For M-RoPE families, a call without explicit positions is a
    text continuation of the one sequence being decoded: offset + rope_delta on all three axes."""

    def __init__(self, vlm: nn.Module, mrope: bool):
        super().__init__()
        self.vlm = vlm
        self.mrope = mrope
        self.rope_delta = 0

    @property
    def language_model(self):
        return self.vlm.language_model

    @property
    def layers(self):
        return self.vlm.language_model.layers

    @property
    def args(self):
        lm = self.vlm.language_model
        return getattr(lm, "args", None) or getattr(lm, "config", None)

    def make_cache(self) -> list:
        return _kv_caches(self.vlm.language_model)

    def __call__(self, inputs: mx.array, cache=None, inputs_embeds=None, position_ids=None, **kwargs):
        extra = {}
        if self.mrope:
            if position_ids is None:
                offset = int(cache[0].offset) if cache else 0
                length = inputs.shape[1]
                pos = mx.arange(offset, offset + length) + self.rope_delta
                position_ids = mx.broadcast_to(pos[None, None, :], (3, inputs.shape[0], length))
            extra["position_ids"] = position_ids
        out = self.vlm.language_model(inputs, inputs_embeds=inputs_embeds, cache=cache, **extra)
        return out.logits


@dataclass
class VisionPrompt:
    tokens: list[int]
    key: list[int]  # the prompt cache's key: tokens, with image placeholders standing for the pixels
    images: int = 0
    pixel_values: object = None
    mask: object = None
    extra: dict = field(default_factory=dict)
    last_image_at: int = -1  # index of the last image placeholder token
    position_ids: object = None  # M-RoPE positions of every prompt token
    rope_delta: int = 0


def decode_image(data: bytes):
    """PIL image in RGB, upright (EXIF orientation applied), as mlx-vlm's load_image reads files."""
    from PIL import Image, ImageOps

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        img = ImageOps.exif_transpose(img)
        return img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad or hostile bytes
        log.info("undecodable image (%d bytes): %s", len(data), e)
        raise EngineError(UNDECODABLE_IMAGE, 400) from e


def with_image_markers(content: str, count: int, marker: str) -> str:
    """Ollama's rule for images in a message (server/prompt.go): each image replaces a literal
    `[img]` in the content, or goes in front of it; here the marker is the model's own image
    placeholder text, which its processor expands into the image's tokens."""
    prefix = ""
    for _ in range(count):
        if "[img]" in content:
            content = content.replace("[img]", marker, 1)
        else:
            prefix += marker
    return (prefix + " " + content).strip() if prefix else content


def raw_with_image_markers(prompt: str, count: int, marker: str) -> str:
    """A raw prompt keeps markers it already holds; Ollama's `[img-N]` tags become the marker; any
    image left unplaced goes in front."""
    for i in range(count):
        prompt = prompt.replace(f"[img-{i}]", marker, 1)
    missing = count - prompt.count(marker)
    return marker * missing + prompt if missing > 0 else prompt


class LoadedVLM(LoadedLLM):
    kind = "vision"

    def __init__(self, model_dir: Path, settings: EngineSettings | None = None, **_ignored):
        # mlx-vlm's attention reads only plain caches (quantized KV caches of mlx-lm are not
        # recognised there), and no disk tier or DRAFT: its keys would not know the images.
        settings = replace(settings or EngineSettings(), kv_cache_type="f16")
        self.images_encoded = 0  # vision tower runs, one per image (tests and logs read it)
        super().__init__(model_dir, settings, disk_cache=None, draft_dir=None)
        text_type = getattr(getattr(self.vlm.config, "text_config", None), "model_type", "")
        self.batchable = self.batchable and self.family in BATCHED_FAMILIES and text_type not in UNBATCHED_TEXT_MODELS
        self.speculating = False
        log.info("vision model %s loaded: %s", self.family, "batched" if self.batchable else "one sequence at a time")

    def _load_model(self, model_dir: Path):
        from mlx_lm.tokenizer_utils import load as load_tokenizer
        from mlx_vlm.utils import load as load_vlm

        vlm, processor = load_vlm(str(model_dir))
        self.vlm = vlm
        self.processor = processor
        config = vlm.config
        self.family = getattr(config, "model_type", "") or ""
        _fix_processor(self.family, processor)
        self.image_token_id = getattr(config, "image_token_index", None)
        if self.image_token_id is None:
            self.image_token_id = getattr(config, "image_token_id", None)
        self.image_marker = self._image_marker(processor)
        eos = getattr(config, "eos_token_id", None)
        if eos is None:
            eos = getattr(getattr(config, "text_config", None), "eos_token_id", None)
        tokenizer = load_tokenizer(model_dir, eos_token_ids=[eos] if isinstance(eos, int) else eos)
        # Every spelling of an image placeholder, longest first (see _without_image_text)
        texts = {self.image_marker, getattr(processor, "image_token", None), getattr(processor, "boi_token", None)}
        if self.image_token_id is not None:
            texts.add(tokenizer.decode([self.image_token_id]))
        self.image_texts = sorted((t for t in texts if isinstance(t, str) and t.strip()), key=len, reverse=True)
        return TextDecoder(vlm, mrope=self.family in MROPE_FAMILIES), tokenizer

    def _image_marker(self, processor) -> str:
        """The text that stands for one image in a prompt, which the processor expands."""
        if self.family in MROPE_FAMILIES:
            return "<|vision_start|><|image_pad|><|vision_end|>"
        for attr in ("boi_token", "image_token"):
            value = getattr(processor, attr, None)
            if isinstance(value, str) and value:
                return value
        return "<image>"

    # -- prompts with images ---------------------------------------------------------------------

    def _vision_prompt(self, spec: PromptSpec, num_ctx: int, cancelled) -> VisionPrompt:
        images = list(spec.images or [])
        for m in spec.messages or ():
            images += list(m.get("images") or ())
        if not images or spec.fim is not None:
            tokens = build_prompt_tokens(self.tokenizer, spec, num_ctx, cancelled=cancelled)
            return self._with_positions(VisionPrompt(tokens=tokens, key=list(tokens)))
        if spec.raw_prompt is not None:
            from mlx_vlm.utils import should_add_special_tokens

            # Tokenized as mlx_vlm.generate tokenizes a formatted prompt: families whose template
            # writes the BOS itself (gemma3) get none added.
            text = raw_with_image_markers(spec.raw_prompt, len(images), self.image_marker)
            special = not spec.context and should_add_special_tokens(self.family, self.processor)
            vp = self._process(text, images, special=special, spec=spec, num_ctx=num_ctx)
        else:
            messages = list(spec.messages or [])
            while True:
                if cancelled():
                    raise PromptCancelled()
                text, used = self._render(spec, messages)
                vp = self._process(text, used, special=False, spec=spec, num_ctx=num_ctx)
                if len(vp.tokens) < num_ctx or not spec.truncate:
                    break
                # Ollama's truncation: drop the oldest non-system message; the last one always stays.
                drop = next((i for i, m in enumerate(messages[:-1]) if m.get("role") != "system"), None)
                if drop is None:
                    break
                del messages[drop]
        # An image's tokens cannot be cut the way text is kept from its end.
        if len(vp.tokens) >= num_ctx:
            raise EngineError(
                f"the input length exceeds the context length: {len(vp.tokens)} prompt tokens with "
                f"{vp.images} image(s), num_ctx {num_ctx}; use fewer or smaller images or a larger num_ctx",
                400,
            )
        return vp

    def _render(self, spec: PromptSpec, messages: list[dict]) -> tuple[str, list[bytes]]:
        """The chat prompt's text and its images in order. A Jinja template gets the images as
        content parts (image parts first, as mlx-vlm formats them), which templates place as their
        own model does; a Go template, or a Jinja one that ignores the parts, gets Ollama's
        markers in the text."""
        images = [img for m in messages for img in (m.get("images") or ())]
        messages = [self._without_image_text(m) for m in messages]
        if not spec.go_template and getattr(self.tokenizer, "has_chat_template", False):
            parts = [self._as_parts(m) for m in messages]
            try:
                text = render_chat(self.tokenizer, parts, spec.tools, spec.think, None)
            except EngineError:  # a template that reads content only as text
                text = ""
            if text and text.count(self.image_marker) == len(images):
                return text, images
        marked = [
            {**m, "content": with_image_markers(m.get("content") or "", len(m["images"]), self.image_marker)}
            if m.get("images")
            else m
            for m in messages
        ]
        return render_chat(self.tokenizer, marked, spec.tools, spec.think, spec.go_template), images

    def _without_image_text(self, m: dict) -> dict:
        """A message whose text spells an image token (a model echoing one, a pasted prompt) would
        have it expanded like an image that was never sent; chat text loses those spellings."""
        content = m.get("content")
        if not isinstance(content, str) or not any(t in content for t in self.image_texts):
            return m
        for t in self.image_texts:
            content = content.replace(t, "")
        return {**m, "content": content}

    @staticmethod
    def _as_parts(m: dict) -> dict:
        if not m.get("images"):
            return m
        content = [{"type": "image"} for _ in m["images"]]
        content.append({"type": "text", "text": m.get("content") or ""})
        return {**m, "content": content}

    def _process(self, text: str, images: list[bytes], *, special: bool, spec: PromptSpec, num_ctx: int):
        from mlx_vlm.utils import prepare_inputs

        pil = [decode_image(b) for b in images]
        try:
            inputs = prepare_inputs(
                self.processor,
                images=pil,
                prompts=text,
                image_token_index=self.image_token_id,
                add_special_tokens=special,
                pad_to_uniform_size=False,
            )
        except EngineError:
            raise
        except Exception as e:  # noqa: BLE001 - the processor's errors name internals
            log.exception("preprocessing %d image(s) failed", len(images))
            raise EngineError(
                "Failed to create new sequence: failed to process inputs: image preprocessing failed", 400
            ) from e
        ids = inputs["input_ids"]
        tokens = [int(t) for t in ids[0].tolist()]
        if spec.context:
            tokens = list(spec.context) + tokens
        positions = [i for i, t in enumerate(tokens) if t == self.image_token_id]
        digest = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in images)).digest()
        # Negative: never a vocabulary id, so a key can only match a key made from the same images.
        pixels_id = -1 - int.from_bytes(digest[:7], "little")
        key = [pixels_id if t == self.image_token_id else t for t in tokens]
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")}
        vp = VisionPrompt(
            tokens=tokens,
            key=key,
            images=len(images),
            pixel_values=inputs.get("pixel_values"),
            mask=inputs.get("attention_mask"),
            extra=extra,
            last_image_at=positions[-1] if positions else -1,
        )
        if spec.context:  # the prefix from an earlier turn: no image arrays line up with it
            vp.mask = None
        return self._with_positions(vp)

    def _with_positions(self, vp: VisionPrompt) -> VisionPrompt:
        if self.family not in MROPE_FAMILIES:
            return vp
        lm = self.vlm.language_model
        ids = mx.array([vp.tokens])
        grid = vp.extra.get("image_grid_thw")
        position_ids, delta = lm.get_rope_index(ids, grid, vp.extra.get("video_grid_thw"), None)
        vp.position_ids = position_ids
        vp.rope_delta = int(mx.array(delta).reshape(-1)[0].item()) if delta is not None else 0
        return vp

    def _prefill(self, vp: VisionPrompt) -> tuple[list | None, int]:
        """Fill a KV cache with all prompt tokens but the last (the decoder takes that one and
        samples after it), from the longest cached prefix: (cache, tokens from the prompt cache).
        The vision tower runs only when the uncached part holds an image."""
        tokens, key = vp.tokens, vp.key
        cache, rest = self.prompt_cache.fetch_nearest_cache(self.model_key, key)
        if cache is None:
            cache, rest = make_prompt_cache(self.model), key
        elif not rest:
            if can_trim_prompt_cache(cache):
                trim_prompt_cache(cache, 1)
                rest = key[-1:]
            else:
                cache, rest = make_prompt_cache(self.model), key
        cached = len(key) - len(rest)
        end = len(tokens) - 1
        if cached >= end:
            return (cache if cached else None), cached
        ids = mx.array([tokens])
        embeds = None
        if vp.pixel_values is not None and vp.last_image_at >= cached:
            started = time.perf_counter()
            features = self.vlm.get_input_embeddings(ids, vp.pixel_values, mask=vp.mask, **vp.extra)
            embeds = features.inputs_embeds
            mx.eval(embeds)
            self.images_encoded += vp.images
            log.debug("encoded %d image(s) in %.3f s", vp.images, time.perf_counter() - started)
        step = max(1, self.settings.prefill_step)
        for start in range(cached, end, step):
            stop = min(start + step, end)
            kwargs = {}
            if embeds is not None:
                kwargs["inputs_embeds"] = embeds[:, start:stop]
            if vp.position_ids is not None:
                kwargs["position_ids"] = vp.position_ids[..., start:stop]
            self.model(ids[:, start:stop], cache=cache, **kwargs)
            mx.eval([c.state for c in cache])
        return cache, cached

    # -- admission -------------------------------------------------------------------------------

    def _admit(self, job: GenerationJob) -> None:
        spec = job.prompt
        if spec.context and self.image_token_id in spec.context:
            # Its placeholders would be read back as text: the pixels are not in the tokens.
            raise EngineError(CONTEXT_WITH_IMAGE, 400)
        has_images = bool(spec.images) or any(m.get("images") for m in spec.messages or ())
        if self.batchable and not has_images:
            return super()._admit(job)  # text on a batching family: exactly the text path
        opts: Options = job.options
        started = time.perf_counter_ns()
        self._check_context(spec.context)
        vp = self._vision_prompt(spec, opts.num_ctx, cancelled=lambda: job.cancelled)
        prompt = vp.tokens
        limit = generation_limit(opts.num_predict, opts.num_ctx)
        max_tokens = min(limit, opts.num_ctx - len(prompt))
        context = list(prompt) if spec.return_context else None
        if max_tokens <= 0:
            job.emit(DoneEvent("length", len(prompt), time.perf_counter_ns() - started, 0, 0, context))
            return
        # An image cannot be re-read from its tokens, so a full window ends the answer ("length")
        # instead of shifting; the text-only alone path does the same.
        spec.shift = False
        reply, gate = self._reply_parser(spec, opts, prompt)
        processors = make_request_processors(opts)
        if spec.grammar:
            processors.append(self._grammar_processor(spec.grammar, gate))
        if self.settings.test_faults and (fault := _requested_fault(spec)):
            processors.append(fault)
        sampler = make_request_sampler(opts, self.vocab_size)
        cache, cached = self._prefill(vp)
        if job.cancelled:
            return
        if not self.batchable:
            self._decode_alone(job, vp, cache, cached, max_tokens, started, context, reply, sampler, processors)
            return
        start = len(prompt) - 1 if cache is not None else 0  # what the prefill left for the batch
        (uid,) = self._generator().insert(
            [prompt[start:]],
            max_tokens=[max_tokens],
            caches=[cache],
            all_tokens=[prompt[:start]],
            samplers=[sampler],
            logits_processors=[processors],
            stop_sequences=[self.stop_sequences],
        )
        self.active[uid] = _Active(
            job=job,
            detokenizer=self._detokenizer(),
            reply=reply,
            prompt_len=len(prompt),
            cached=cached,
            started=started,
            context=context,
            limit=limit,
            num_keep=len(prompt),
            sampler=sampler,
            processors=processors,
            stops=self.stop_sequences,
            key_prefix=vp.key,
        )

    def _decode_alone(
        self, job, vp: VisionPrompt, cache, cached: int, max_tokens, started, context, reply, sampler, processors
    ) -> None:
        """One sequence decoded to its end on this thread (families that cannot batch)."""
        prompt = vp.tokens
        if cache is None:
            cache = make_prompt_cache(self.model)
        self.model.rope_delta = vp.rope_delta
        stop_ids = set(self.eos_ids)
        detokenizer = self._detokenizer()
        first_token_at = None
        count = 0
        reason = "length"
        generated: list[int] = []
        gen = generate_step(
            mx.array(prompt[-1:]),
            self.model,
            max_tokens=max_tokens,
            sampler=sampler,
            logits_processors=processors,
            prompt_cache=cache,
        )
        try:
            for token, logprobs in gen:
                first_token_at = first_token_at or time.perf_counter_ns()
                if job.cancelled:
                    return
                token = int(token)
                lp = None
                end = token in stop_ids
                if not end:
                    detokenizer.add_token(token)
                    count += 1
                    generated.append(token)
                    if context is not None:
                        context.append(token)
                    if job.want_logprobs:
                        lp = [token_logprobs(self.tokenizer, logprobs, token, job.top_logprobs)]
                if end or count >= max_tokens:
                    detokenizer.finalize()
                piece = reply.feed(detokenizer.last_segment)
                if piece or lp:
                    job.emit(_event(piece, lp))
                if end or reply.stopped:
                    reason = "stop"
                    break
        finally:
            gen.close()
        # The finished sequence's cache serves the next question (keyed by the images' bytes). The
        # generator has already fed the last token it yielded (a stop token too): trim to the key.
        key = vp.key + generated
        extra = int(cache[0].offset) - len(key)
        if extra == 0 or (extra > 0 and can_trim_prompt_cache(cache) and trim_prompt_cache(cache, extra) == extra):
            self.prompt_cache.insert_cache(self.model_key, key, cache)
        tail = reply.finish()
        if tail:
            job.emit(_event(tail, None))
        ended = time.perf_counter_ns()
        first_token_at = first_token_at or ended
        job.emit(
            DoneEvent(
                reason,
                len(prompt),
                first_token_at - started,
                count,
                ended - first_token_at,
                context,
                prompt_eval_cached_count=cached,
            )
        )
