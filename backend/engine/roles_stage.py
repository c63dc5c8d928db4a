"""The "roles" stage: per-head role scores for the head atlas (definitions: ``docs/REFERENCES.md`` section 5 and
:mod:`backend.roles`; the per-pattern numbers come from :mod:`backend.metrics`).

After the run's capture pass (which gives ``metrics.previous_token``, ``metrics.sink_first`` and
``metrics.entropy`` on the run's prompts; ``backend.engine.stages`` adds the sink-metrics reducer when the run
did not ask for "metrics") the stage runs the model on synthetic inputs:

1. **Repeated random tokens** (Olsson et al. 2022): ``N_SEQS`` sequences of ``L`` distinct token ids drawn
   uniformly (seeded by the run's ``seed``) from the vocabulary minus the tokenizer's special ids and
   ``[unusedN]`` placeholders, each repeated twice and framed by the tokenizer's own special tokens (BOS
   for Llama-style LMs, ``[CLS] ... [SEP]`` for BERT, none for GPT-2). ``L = min(SEQ_LEN, (limit - frame) // 2)``.
   On them: ``metrics.induction`` (:func:`backend.metrics.induction_score`), ``metrics.duplicate_token``
   (:func:`backend.metrics.duplicate_token_score` over the whole sequence), and the positional profile
   (:func:`backend.metrics.positional_profile`, offsets ``|d| <= 8``) -> ``metrics.positional_peak`` (the
   offset with the most mean attention) and ``metrics.positional_mass`` (that attention); the full profile
   is ``roles.positional_profile [L, H, 17]``. Each number is the mean over the sequences. The synthetic
   inputs are used for the positional profile because they are long and of equal length: on short prompts
   the largest offsets have a single query, which a first-token sink makes look like a positional head.
2. **Retrieval** (Wu et al. 2024), causal LMs with an LM head only; two protocols (run option
   ``retrieval_test``, :data:`backend.roles.RETRIEVAL_TESTS`):

   * ``"text"`` (default), as the released detector (nightdessert/Retrieval_Head,
     ``retrieval_head_detection.py``): a haystack text (option ``retrieval_haystack``, default
     :data:`~backend.roles.RETRIEVAL_HAYSTACK`, repeated to fill the context) is cut to the context
     budget less the needle, the needle (``retrieval_needle``) is inserted at 20/50/80 % depth, moved back to
     just after a period token (``insert_needle``), and the question (``retrieval_question``) follows in the
     released format (``retrieval_template``, default :data:`~backend.roles.RETRIEVAL_TEMPLATE`; with a
     tokenizer that has a chat template, the released chat form ``<book>{context}</book>`` + question as one
     user turn with the generation prompt). The
     answer to recall (``retrieval_answer``, the released ``real_needle``; default the needle) is located in
     the prompt by :func:`backend.roles.find_needle_span`. Greedy decoding with the KV cache for at most
     :data:`~backend.roles.RETRIEVAL_MAX_NEW_TOKENS` tokens, stopping after a token whose text holds a
     newline. The released code prefills all but the last prompt token and then feeds that token, so its
     first scored step is the query of the last prompt token, which is what our prompt pass's last row
     gives: every generated token is scored, the first included. A trial counts when the ROUGE-1 recall of
     the answer's words (Porter-stemmed, :func:`~backend.roles.rouge1_recall`) in the decoded response
     exceeds 0.5;
   * ``"synthetic"`` (variant): the tokenizer's prefix + a haystack of random tokens with a needle of
     ``CUE_LEN + NEEDLE_LEN`` distinct random tokens (none of them in the haystack) at 20/50/80 % depth +
     the needle's first ``CUE_LEN`` tokens as the cue; ``NEEDLE_LEN`` greedy steps; a trial counts when the
     output's ROUGE-1 recall on token ids exceeds 0.5. It needs no instruction following, so small models
     can be probed.

   Per counted trial the score is :func:`backend.roles.retrieval_hits` (top-1 attended position in the
   answer span holding the generated token, / span length); ``metrics.retrieval`` is the mean over counted
   trials, 0 for every head (with a notice) when none counts. ``roles.retrieval_recall [trials]`` keeps each
   trial's recall (the needle recall shown in the atlas), ``roles.retrieval_trials`` (UTF-8 JSON, uint8) the
   protocol, depths, responses and recalls. Simplification against the paper: contexts of at most
   ``TEXT_CONTEXT_TOKENS`` (text) or ``NIAH_MAX_TOKENS`` (synthetic) tokens and 3 depths instead of lengths
   up to 50k and 10 depths.
3. ``roles.dominant [L, H]`` int32: :func:`backend.roles.dominant_roles` (code table ``ROLES``).

All ``metrics.*`` arrays are float32 ``[L, H]``. Progress and cancellation are checked between sequences
and generation steps.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np
import torch

from backend import names, roles
from backend import metrics as ref
from backend.engine import inputs as model_inputs
from backend.engine.cancel import Cancelled
from backend.engine.capture import BaseReducer, CaptureSession, LayerView
from backend.engine.models import LoadedModel

N_SEQS = 4
SEQ_LEN = 32
DEPTHS = (0.2, 0.5, 0.8)
CUE_LEN = 4
NEEDLE_LEN = 8
NIAH_MAX_TOKENS = 160
TEXT_CONTEXT_TOKENS = 480
"""Prompt budget of the text protocol (haystack + needle + question), within the model's token limit."""
_UNUSED = re.compile(r"^[\[<]unused\d+[\]>]$")


class PatternCollector(BaseReducer):
    """Keeps every layer's full pattern of one unpadded batch: ``patterns[l] [B, H, T, T]`` float32."""

    def __init__(self) -> None:
        self.patterns: dict[int, np.ndarray] = {}

    def begin_layer(self, view: LayerView) -> None:
        b, h, t, _ = view.query.shape
        self.patterns[view.layer] = np.zeros((b, h, t, view.key.shape[2]), dtype=np.float32)

    def chunk(self, view: LayerView, q0: int, pattern: torch.Tensor) -> None:
        self.patterns[view.layer][:, :, q0 : q0 + pattern.shape[2]] = pattern.float().cpu().numpy()


class TopKey(BaseReducer):
    """Each head's most-attended key position for the *last* query row: ``top[l] [B, H]`` int64 (``topk(1)``
    as the released detector, so exact ties, e.g. a uniform row, resolve the same way)."""

    def __init__(self) -> None:
        self.top: dict[int, np.ndarray] = {}

    def chunk(self, view: LayerView, q0: int, pattern: torch.Tensor) -> None:
        if q0 + pattern.shape[2] == view.query.shape[2]:  # the chunk holding the last query
            self.top[view.layer] = pattern[:, :, -1, :].float().topk(1, dim=-1).indices[..., 0].cpu().numpy()


# --- inputs -----------------------------------------------------------------------------------------


def special_frame(tok: Any) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after a text: ``([BOS], [])``, ``([CLS], [SEP])``..."""
    for probe in ("x", "a", "the"):
        full = list(tok(probe, add_special_tokens=True)["input_ids"])
        bare = list(tok(probe, add_special_tokens=False)["input_ids"])
        for i in range(len(full) - len(bare) + 1):
            if bare and full[i : i + len(bare)] == bare:
                return full[:i], full[i + len(bare) :]
    return [], []


def candidate_ids(tok: Any, vocab_size: int) -> np.ndarray:
    """Token ids random sequences may use: the vocabulary minus special ids and ``[unusedN]`` placeholders."""
    n = min(int(vocab_size), len(tok))
    special = set(int(i) for i in tok.all_special_ids)
    toks = tok.convert_ids_to_tokens(list(range(n)))
    ok = [i for i, t in enumerate(toks) if i not in special and not (isinstance(t, str) and _UNUSED.match(t))]
    return np.asarray(ok, dtype=np.int64)


def _draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    """``n`` ids from ``pool``, distinct when the pool is large enough."""
    return rng.choice(pool, size=n, replace=n > len(pool))


def repeated_sequences(rng: np.random.Generator, pool: np.ndarray, n_seqs: int, length: int) -> np.ndarray:
    """``[n_seqs, length]`` random ids (distinct within a sequence when possible), one row per sequence."""
    return np.stack([_draw(rng, pool, length) for _ in range(n_seqs)])


def token_limit(loaded: LoadedModel) -> int:
    from backend.settings import get_settings

    return model_inputs.token_limit(loaded, get_settings())


# --- the passes -------------------------------------------------------------------------------------


def _forward(loaded: LoadedModel, ids: torch.Tensor, reducers: list, **kwargs: Any):
    session = CaptureSession(loaded.model, reducers=reducers, prompts=list(range(ids.shape[0])),
                             lengths=[ids.shape[1]] * ids.shape[0])
    with torch.no_grad(), session:
        out = loaded.model(input_ids=ids.to(loaded.device), **kwargs)
    session.check_captured()
    return out


def repeated_token_scores(loaded: LoadedModel, seqs: np.ndarray, prefix: Sequence[int], suffix: Sequence[int],
                          should_cancel: Callable[[], bool] = lambda: False,
                          progress: Callable[[float], None] = lambda f: None) -> dict[str, np.ndarray]:
    """Induction, duplicate-token and positional scores on ``seqs [N, L]`` each repeated twice.

    Returns ``induction``, ``duplicate_token``, ``positional_peak``, ``positional_mass`` (``[layers, heads]``
    float32) and ``positional_profile`` (``[layers, heads, 2K+1]``), each the mean over the sequences.
    """
    n_layers, n_heads, K = loaded.n_layers, loaded.n_heads, roles.POSITIONAL_MAX_OFFSET
    L = seqs.shape[1]
    per_seq: dict[str, list[np.ndarray]] = {"induction": [], "duplicate_token": [], "profile": []}
    for i, seq in enumerate(seqs):
        if should_cancel():
            raise Cancelled("cancelled by the user")
        tokens = np.concatenate([prefix, seq, seq, suffix]).astype(np.int64)
        collector = PatternCollector()
        _forward(loaded, torch.as_tensor(tokens)[None], [collector],
                 attention_mask=torch.ones(1, len(tokens), dtype=torch.long, device=loaded.device),
                 **model_inputs.last_logits_only(loaded.model))  # no logits are read
        ind, dup, prof = (np.zeros((n_layers, n_heads)), np.zeros((n_layers, n_heads)),
                          np.zeros((n_layers, n_heads, 2 * K + 1)))
        for layer, pat in collector.patterns.items():
            A = pat[0]  # [H, T, T]
            ind[layer] = ref.induction_score(A, L, offset=len(prefix))
            dup[layer] = ref.duplicate_token_score(A, tokens)
            prof[layer] = ref.positional_profile(A, K)
        per_seq["induction"].append(ind)
        per_seq["duplicate_token"].append(dup)
        per_seq["profile"].append(prof)
        progress((i + 1) / len(seqs))
    profile = ref.mean_over_prompts(per_seq["profile"])  # [L, H, 2K+1]
    peak = profile.argmax(axis=-1)
    return {
        "induction": ref.mean_over_prompts(per_seq["induction"]).astype(np.float32),
        "duplicate_token": ref.mean_over_prompts(per_seq["duplicate_token"]).astype(np.float32),
        "positional_peak": (peak - K).astype(np.float32),
        "positional_mass": np.take_along_axis(profile, peak[..., None], axis=-1)[..., 0].astype(np.float32),
        "positional_profile": profile.astype(np.float32),
    }


def needle_prompt(rng: np.random.Generator, pool: np.ndarray, prefix: Sequence[int], context_len: int,
                  depth: float) -> tuple[list[int], int, int, list[int]]:
    """A synthetic needle-in-a-haystack prompt of ``context_len`` tokens.

    Returns ``(prompt ids, needle start, needle end, needle ids)``: the needle (the part to be generated)
    sits at ``start .. end - 1``, right after its ``CUE_LEN`` cue tokens; the prompt ends with the cue.
    """
    needle_all = _draw(rng, pool, CUE_LEN + NEEDLE_LEN)
    rest = np.setdiff1d(pool, needle_all) if len(pool) > 2 * len(needle_all) else pool
    n_hay = context_len - len(prefix) - len(needle_all) - CUE_LEN
    if n_hay < 1:
        raise ValueError(f"context of {context_len} tokens is too short for a needle")
    hay = rng.choice(rest, size=n_hay, replace=True)
    cut = int(round(depth * n_hay))
    ids = list(prefix) + hay[:cut].tolist() + needle_all.tolist() + hay[cut:].tolist() + needle_all[:CUE_LEN].tolist()
    start = len(prefix) + cut + CUE_LEN
    return ids, start, start + NEEDLE_LEN, needle_all[CUE_LEN:].tolist()


def greedy_with_top_keys(loaded: LoadedModel, prompt: Sequence[int], steps: int,
                         should_cancel: Callable[[], bool] = lambda: False,
                         stop: Callable[[int], bool] | None = None) -> tuple[list[int], np.ndarray]:
    """Greedy generation with the KV cache; returns the generated ids and ``top [steps, layers, heads]``,
    each head's top-attended position for the query whose logits gave each generated token. With ``stop``,
    generation ends after the first token for which ``stop(id)`` is true (that token is kept and scored)."""
    return greedy_batch_with_top_keys(loaded, [prompt], steps, should_cancel, stop)[0]


def greedy_batch_with_top_keys(loaded: LoadedModel, prompts: Sequence[Sequence[int]], steps: int,
                               should_cancel: Callable[[], bool] = lambda: False,
                               stop: Callable[[int], bool] | None = None,
                               progress: Callable[[float], None] = lambda f: None,
                               ) -> list[tuple[list[int], np.ndarray]]:
    """:func:`greedy_with_top_keys` of several prompts, those of equal length in one batch: decoding is bound by
    reading the weights once per step, so the trials of a retrieval test share that read. No padding is needed (a
    row's numbers are those of its own run up to float rounding). A row that has stopped rides along until its
    batch ends; its extra tokens are dropped. ``progress(fraction)`` after each step (of at most ``steps`` per
    group)."""
    out: list[tuple[list[int], np.ndarray] | None] = [None] * len(prompts)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    keep = model_inputs.last_logits_only(loaded.model)
    for g, (length, rows) in enumerate(groups.items()):
        batch = torch.as_tensor([list(prompts[i]) for i in rows], dtype=torch.long)
        past = None
        if length > 1:
            # As the released detector: prefill all but the last prompt token (no capture: only the last row is
            # scored; no logits: none is read), then feed that token, whose query is the first scored step.
            with torch.no_grad():
                past = loaded.model(input_ids=batch[:, :-1].to(loaded.device), use_cache=True,
                                    **keep).past_key_values
        ids = batch[:, -1:]
        generated: list[list[int]] = [[] for _ in rows]
        tops: list[list[np.ndarray]] = [[] for _ in rows]
        done = [False] * len(rows)
        for step in range(steps):
            if should_cancel():
                raise Cancelled("cancelled by the user")
            progress((g + step / steps) / len(groups))
            top = TopKey()
            res = _forward(loaded, ids, [top], past_key_values=past, use_cache=True, **keep)
            past = res.past_key_values
            nxt = res.logits[:, -1].float().argmax(dim=-1).tolist()
            heads = np.stack([top.top[l] for l in range(loaded.n_layers)], axis=1)  # [rows, layers, heads]
            for r in range(len(rows)):
                if not done[r]:
                    generated[r].append(int(nxt[r]))
                    tops[r].append(heads[r])
                    done[r] = stop is not None and stop(int(nxt[r]))
            if all(done):
                break
            ids = torch.tensor([[t] for t in nxt], dtype=torch.long)
        for r, i in enumerate(rows):
            out[i] = (generated[r], np.stack(tops[r]))
    return out  # type: ignore[return-value]


def retrieval_scores(loaded: LoadedModel, rng: np.random.Generator, pool: np.ndarray, prefix: Sequence[int],
                     context_len: int, should_cancel: Callable[[], bool] = lambda: False,
                     progress: Callable[[float], None] = lambda f: None) -> tuple[np.ndarray, np.ndarray]:
    """``(retrieval [layers, heads] float32, recall [trials] float32)`` over the ``DEPTHS`` trials."""
    credited, recalls = [], []
    trials = [needle_prompt(rng, pool, prefix, context_len, depth) for depth in DEPTHS]  # rng order as before
    decoded = greedy_batch_with_top_keys(loaded, [t[0] for t in trials], NEEDLE_LEN, should_cancel,
                                         progress=lambda f: progress(0.9 * f))
    for i, ((prompt, start, end, needle), (generated, top)) in enumerate(zip(trials, decoded)):
        recall = roles.copy_recall(generated, needle)
        recalls.append(recall)
        if recall > roles.RETRIEVAL_MIN_RECALL:
            credited.append(roles.retrieval_hits(top, generated, prompt + generated, start, end))
        progress(0.9 + 0.1 * (i + 1) / len(DEPTHS))
    scores = np.mean(credited, axis=0) if credited else np.zeros((loaded.n_layers, loaded.n_heads))
    return scores.astype(np.float32), np.asarray(recalls, dtype=np.float32)


def newline_stop(tok: Any) -> Callable[[int], bool]:
    """``stop(id)``: the token's text holds a newline (the released detector stops at ``<0x0A>``, id 144 of Qwen)."""
    cache: dict[int, bool] = {}

    def stop(i: int) -> bool:
        if i not in cache:
            cache[i] = "\n" in tok.decode([int(i)], skip_special_tokens=False)
        return cache[i]

    return stop


def _ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def period_ids(tok: Any) -> set[int]:
    """Ids a sentence-ending period may take (alone, and after a word)."""
    out = set(_ids(tok, "."))
    tail = _ids(tok, "word.")
    if tail:
        out.add(tail[-1])
    return out


def text_needle_prompt(tok: Any, haystack: str, needle: str, question: str, template: str, answer: str,
                       budget: int, depth: float, chat: bool = False) -> tuple[list[int], int, int, str]:
    """The released detector's prompt: ``(ids, answer start, answer end, prompt text)``.

    The haystack (repeated until long enough) is cut to ``budget`` tokens less the needle and the question;
    the needle goes in at ``depth``, moved back to just after a period token; the context is decoded to text
    and the question appended in ``template``; the whole is tokenized with the tokenizer's special tokens.
    With ``chat`` (a tokenizer with a chat template, as the released code does for chat models) the user turn
    is ``<book>{context}</book>\n`` + the question, with the generation prompt. The answer span is :func:`backend.roles.find_needle_span` of the answer's ids (``-1, -1``: not found).
    """
    tail = template.format(question=question)
    wrap = (lambda body: tok.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                                 add_generation_prompt=True)) if chat else None
    frame = len(_ids(tok, wrap("<book></book>\n"))) if wrap else 0
    room = budget - len(_ids(tok, tail)) - frame - 4  # special tokens and re-tokenization at the seams
    needle_ids = _ids(tok, needle)
    if room - len(needle_ids) < 8:
        raise ValueError(f"a context of {budget} tokens is too short for this needle and question")
    hay_ids = _ids(tok, haystack)
    if not hay_ids:
        raise ValueError("the haystack text has no tokens")
    while len(hay_ids) < room:
        hay_ids = hay_ids + _ids(tok, " " + haystack)
    context = hay_ids[: room - len(needle_ids)]
    point = int(len(context) * depth)
    periods = period_ids(tok)
    while point > 0 and context[point - 1] not in periods:
        point -= 1
    context_text = tok.decode(context[:point] + needle_ids + context[point:])
    if wrap:
        text = wrap(f"<book>{context_text}</book>\n{tail}")
        ids = _ids(tok, text)[:budget]  # the template holds the special tokens
    else:
        text = context_text + tail
        ids = list(tok(text)["input_ids"])[:budget]
    start, end = roles.find_needle_span(ids, _ids(tok, answer))
    return ids, start, end, text


def uses_chat(tok: Any, texts: dict[str, str]) -> bool:
    """The chat form: the tokenizer has a chat template and the run kept the released question format."""
    return bool(getattr(tok, "chat_template", None)) and texts.get("template") == roles.RETRIEVAL_TEMPLATE


def retrieval_texts(options: dict[str, Any]) -> dict[str, str]:
    """The text protocol's needle, question, answer, haystack and template (run options, else the defaults)."""
    needle = options.get("retrieval_needle") or roles.RETRIEVAL_NEEDLE
    answer = options.get("retrieval_answer") or (roles.RETRIEVAL_ANSWER if not options.get("retrieval_needle")
                                                 else needle.strip())
    return {"needle": needle, "question": options.get("retrieval_question") or roles.RETRIEVAL_QUESTION,
            "answer": answer, "haystack": options.get("retrieval_haystack") or roles.RETRIEVAL_HAYSTACK,
            "template": options.get("retrieval_template") or roles.RETRIEVAL_TEMPLATE}


def text_retrieval_scores(loaded: LoadedModel, texts: dict[str, str], budget: int,
                          should_cancel: Callable[[], bool] = lambda: False,
                          progress: Callable[[float], None] = lambda f: None,
                          ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """``(retrieval [layers, heads] float32, recall [trials] float32, trials)`` of the text protocol."""
    tok = loaded.preprocessor
    stop = newline_stop(tok)
    chat = uses_chat(tok, texts)
    credited, recalls, trials = [], [], []
    prompts = [text_needle_prompt(tok, texts["haystack"], texts["needle"], texts["question"], texts["template"],
                                  texts["answer"], budget, depth, chat) for depth in DEPTHS]
    decoded = greedy_batch_with_top_keys(loaded, [p[0] for p in prompts], roles.RETRIEVAL_MAX_NEW_TOKENS,
                                         should_cancel, stop, progress=lambda f: progress(0.9 * f))
    for i, (depth, (ids, start, end, _), (generated, top)) in enumerate(zip(DEPTHS, prompts, decoded)):
        response = tok.decode(generated, skip_special_tokens=True).strip()
        recall = roles.rouge1_recall(texts["answer"], response)
        counted = start >= 0 and recall > roles.RETRIEVAL_MIN_RECALL
        if counted:
            credited.append(roles.retrieval_hits(top, generated, ids + generated, start, end))
        recalls.append(recall)
        trials.append({"depth": depth, "context_tokens": len(ids), "answer_span": [start, end], "chat": chat,
                       "response": response, "recall": recall, "counted": bool(counted)})
        progress(0.9 + 0.1 * (i + 1) / len(DEPTHS))
    scores = np.mean(credited, axis=0) if credited else np.zeros((loaded.n_layers, loaded.n_heads))
    return scores.astype(np.float32), np.asarray(recalls, dtype=np.float32), trials


# --- the stage --------------------------------------------------------------------------------------


def _json_array(obj: Any) -> np.ndarray:
    import json  # noqa: PLC0415

    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8).copy()


def _vocab_size(loaded: LoadedModel) -> int:
    cfg = loaded.model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(getattr(cfg, "vocab_size", 0) or len(loaded.preprocessor))


def _run_metrics(reducers: list) -> dict[str, np.ndarray]:
    from backend.engine.metrics_reducer import SinkMetricsReducer

    for r in reducers:
        if isinstance(r, SinkMetricsReducer):
            out = r.results()
            return {k: out[names.metric(k)] for k in ("previous_token", "sink_first", "entropy")}
    return {}


def roles_stage(loaded: LoadedModel, inputs: Sequence[Any], options: dict[str, Any], reducers: list,
                emit: Callable[[str, np.ndarray], None], progress: Callable[[float, str], None],
                should_cancel: Callable[[], bool], info: Any) -> None:
    """Emit the role scores, ``roles.*`` arrays and ``roles.dominant`` (see the module docstring)."""
    if loaded.kind != "text":
        info.notices.append("Head roles need a text model (random-token and needle inputs); skipped.")
        return
    tok = loaded.preprocessor
    rng = np.random.default_rng([int(options.get("seed", 0)), 2022])
    prefix, suffix = special_frame(tok)
    pool = candidate_ids(tok, _vocab_size(loaded))
    limit = token_limit(loaded)
    seq_len = min(SEQ_LEN, (limit - len(prefix) - len(suffix)) // 2)
    if seq_len < 2 or len(pool) < 2:
        info.notices.append("Head roles: the model's context or vocabulary is too small; skipped.")
        return
    causal_lm = loaded.causal and hasattr(loaded.model, "get_output_embeddings") and (
        loaded.model.get_output_embeddings() is not None)
    share = 0.5 if causal_lm else 1.0
    progress(0.0, "roles: repeated random tokens")
    seqs = repeated_sequences(rng, pool, N_SEQS, seq_len)
    scores = repeated_token_scores(
        loaded, seqs, prefix, suffix, should_cancel,
        lambda f: progress(share * f, "roles: repeated random tokens"),
    )
    emit(names.role_array("positional_profile"), scores.pop("positional_profile"))
    if causal_lm:
        test = options.get("retrieval_test", roles.DEFAULT_RETRIEVAL_TEST)
        part = lambda f: progress(share + (1 - share) * f, "roles: needle in a haystack")  # noqa: E731
        texts: dict[str, str] = {}
        retrieval = None
        if test == "text":
            texts = retrieval_texts(options)
            budget = min(limit - roles.RETRIEVAL_MAX_NEW_TOKENS, TEXT_CONTEXT_TOKENS)
            try:
                retrieval, recall, trials = text_retrieval_scores(loaded, texts, budget, should_cancel, part)
            except ValueError as exc:  # the model's context cannot hold needle, question and 50 new tokens
                info.notices.append(
                    f"Retrieval: the model's context of {limit} tokens is too small for the text test ({exc}, with "
                    f"{roles.RETRIEVAL_MAX_NEW_TOKENS} tokens to generate); the synthetic copy test was used "
                    "instead (retrieval_test 'synthetic').")
                test, texts = "synthetic", {}
        if test == "synthetic":
            context_len = min(limit - NEEDLE_LEN, NIAH_MAX_TOKENS)
            retrieval, recall = retrieval_scores(loaded, rng, pool, prefix, context_len, should_cancel, part)
            trials = [{"depth": d, "recall": float(r), "counted": bool(r > roles.RETRIEVAL_MIN_RECALL)}
                      for d, r in zip(DEPTHS, recall)]
        if retrieval is not None:
            scores["retrieval"] = retrieval
            emit(names.role_array("retrieval_recall"), recall)
            emit(names.role_array("retrieval_trials"), _json_array(
                {"test": test, "label": roles.RETRIEVAL_TESTS[test], "trials": trials,
                 **{k: v for k, v in texts.items() if k != "haystack"}}))
            if any(t.get("answer_span", [0])[0] < 0 for t in trials):
                info.notices.append("Retrieval: the answer's tokens were not found in some prompts (they must "
                                    "appear in the needle); those trials were not counted.")
            if not any(t["counted"] for t in trials):
                info.notices.append(
                    f"Retrieval: the model did not reproduce the needle in any of {len(recall)} trials (best recall "
                    f"{float(recall.max()):.2f}, ROUGE-1 > 0.5 needed), so no head could be credited; every "
                    "retrieval score is 0."
                )
    elif loaded.causal:
        info.notices.append("Retrieval scores need a causal LM with an LM head; this model has none.")
    for key, arr in scores.items():
        emit(names.metric(key), np.asarray(arr, dtype=np.float32))
    all_scores = {**scores, **_run_metrics(reducers)}
    emit(names.role_array("dominant"), roles.dominant_roles(all_scores))
    progress(1.0, "roles: done")

