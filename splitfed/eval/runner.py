"""Run the attack x defense grid: train each cell, let every attack guess, score the guesses.

Results go to ``RUN_DIR/results.json`` after every cell (written atomically), so an
interrupted run resumes from the cells already done; the report is re-rendered at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from splitfed.atomic import atomic_open
from splitfed.config.fields import plain
from splitfed.errors import SplitfedError
from splitfed.eval import metrics
from splitfed.eval.attacks.base import (
    AttackerView,
    MembershipScores,
    Released,
    TextGuess,
    TokenGuess,
    UpdateView,
)
from splitfed.eval.config import AttackConfig, AttackSection, DefenseSpec, cell_key
from splitfed.eval.data import AUX_DATA, PRIVATE_DATA, EvalData, load_eval_data
from splitfed.eval.registry import attacks_for, build
from splitfed.eval.results import RESULTS, VERSION
from splitfed.eval.train import Trained, base_perplexity, fresh_split, lora_config, resolve_cut, train_cell


class RunDirError(SplitfedError, ValueError):
    """The run directory holds results that cannot be resumed with this config."""


@dataclass(frozen=True)
class Truth:
    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    texts: list[str]  # decoded victim examples
    train_texts: list[str]  # every training text of the victim
    train_tokens: set[int]
    heldout_tokens: set[int]
    matched_tokens: set[int]  # the first len(heldout) training examples: a set the size of heldout_tokens'
    members: int  # candidates[:members] are members


def _decoder(tokenizer) -> Callable[[list[int]], str]:
    return lambda ids: tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def _atomic_json(path: Path, obj: dict) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=1, allow_nan=False)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def setting(cfg: AttackConfig, n_layers: int) -> dict:
    from splitfed.eval.registry import ATTACKS

    d, t = cfg.data, cfg.train
    return {
        "model": cfg.model.name,
        "layers": n_layers,
        "top_cut": resolve_cut(cfg, n_layers, 0)[1],
        "goal_cut": cfg.model.goal_cut,
        "max_length": d.max_length,
        "train_examples": d.train_examples,
        "heldout_examples": d.heldout_examples,
        "victims": d.victims,
        "aux_texts": d.aux_texts,
        "steps": t.steps,
        "batch_size": t.batch_size,
        "lr": t.lr,
        "clients": t.clients,
        "delta": t.delta,
        "seed": t.seed,
        "private_data": PRIVATE_DATA,
        "aux_data": AUX_DATA,
        "attackers": {
            name: {
                "party": a.knowledge.party,
                "sees": a.knowledge.sees,
                "knows": a.knowledge.knows,
                "summary": a.summary,
                "target": a.target,
            }  # fmt: skip
            for name, a in ATTACKS.items()
        },
    }


def open_run(cfg: AttackConfig, run_dir: Path, *, restart: bool = False) -> dict:
    """The results so far in `run_dir` (a new, empty record when there are none)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RESULTS
    wanted = plain(cfg)
    if path.is_file() and not restart:
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunDirError(f"{path}: unreadable results ({err}); pass --restart to start over") from None
        if results.get("config") != json.loads(json.dumps(wanted)):
            raise RunDirError(
                f"{path} holds results of a different config; use another --out directory or pass --restart"
            )
        return results
    return {"version": VERSION, "config": wanted, "setting": {}, "cells": []}


def _truth(data: EvalData, tokenizer) -> Truth:
    from splitfed.data import collate

    decode = _decoder(tokenizer)
    batch = collate(data.victims, pad_token_id=data.pad)
    return Truth(
        ids=batch["input_ids"],
        mask=batch["attention_mask"],
        labels=batch["labels"],
        texts=[decode(ex.input_ids) for ex in data.victims],
        train_texts=[decode(ex.input_ids) for ex in data.train],
        train_tokens={i for ex in data.train for i in ex.input_ids},
        heldout_tokens={i for ex in data.heldout for i in ex.input_ids},
        matched_tokens={i for ex in data.train[: len(data.heldout)] for i in ex.input_ids},
        members=min(len(data.train), len(data.heldout)),
    )


def observe(trained: Trained, truth: Truth) -> dict[str, Released]:
    """What the server receives for the victim examples from the trained client."""
    split, ids, mask = trained.split, truth.ids, truth.mask
    split.eval()
    with torch.no_grad():
        act = trained.release_activations(split.bottom(ids, mask), mask).detach()
        out = split.trunk(act, mask).detach()
    x = out.clone().requires_grad_(True)
    split.top(x, mask, truth.labels).loss.backward()
    grad = trained.release_gradient(x.grad, mask).detach()
    for part in split.parts.values():
        for p in part.parameters():
            p.grad = None
    return {"activations": Released(act, mask), "trunk_output": Released(out, mask), "gradients": Released(grad, mask)}


def _view(
    cfg: AttackConfig, cut, d: DefenseSpec, data: EvalData, tokenizer, trained: Trained, truth: Truth
) -> AttackerView:
    from splitfed.models import get_adapter_state

    public = fresh_split(cfg.model.name, cut)
    seen = observe(trained, truth)
    members = data.train[: truth.members]
    nonmembers = data.heldout[: truth.members]
    split = trained.split
    return AttackerView(
        cut=cut,
        tokenizer=tokenizer,
        public_split=lambda: copy.deepcopy(public),  # a fresh copy each time: attacks may load adapters
        lora=lora_config(cfg.model.lora_r),
        aux=data.aux,
        pad_token_id=data.pad,
        seed=cfg.train.seed,
        release_activations=trained.attacker_release_activations,
        release_gradient=trained.attacker_release_gradient,
        activations=seen["activations"],
        gradients=seen["gradients"],
        trunk_output=seen["trunk_output"],
        update=UpdateView(
            before=trained.before,
            after=trained.aggregate if trained.aggregate is not None else trained.victim,
            trunk={k: v.detach().clone() for k, v in get_adapter_state(split.trunk).items()},
            clients=trained.clients,
        ),
        query_logits=lambda i, k: split(i, k),
        reference_logits=lambda i, k: public(i, k),
        candidates=[ex.input_ids for ex in [*members, *nonmembers]],
        activation_clip=trained.clip.get("activation"),
        activation_unit=d.activation_unit,
    )


def attack_options(cfg: AttackConfig) -> AttackSection:
    """`cfg.attacks`, the update inversion's decoded texts capped at ``data.max_length`` tokens."""
    a = cfg.attacks
    length = min(a.update.length, cfg.data.max_length)
    return dataclasses.replace(a, update=dataclasses.replace(a.update, length=length))


def score(guess, truth: Truth, tokenizer) -> dict[str, float]:
    """The guess against the truth: token accuracy and ROUGE, or AUC, or token-set precision."""
    decode = _decoder(tokenizer)
    if isinstance(guess, TokenGuess) and guess.shift == 0:
        m = truth.mask.bool()
        out = {"token_accuracy": metrics.token_accuracy(guess.ids, truth.ids, truth.mask)}
        preds = [decode(guess.ids[r][m[r]]) for r in range(len(m))]
        return {**out, **metrics.mean_rouge(preds, truth.texts)}
    if isinstance(guess, TokenGuess):
        labels = truth.labels[:, 1:]
        keep = (labels != -100).long()
        return {"token_accuracy": metrics.token_accuracy(guess.ids[:, :-1], labels.clamp(min=0), keep)}
    if isinstance(guess, MembershipScores):
        labels = [1] * truth.members + [0] * (len(guess.scores) - truth.members)
        return {
            "auc": metrics.roc_auc(guess.scores, labels),
            "tpr_at_1pct_fpr": metrics.tpr_at_fpr(guess.scores, labels),
        }
    if isinstance(guess, TextGuess):
        best = [max(metrics.rouge(text, ref)["rouge_l"] for ref in truth.train_texts) for text in guess.texts]
        held = metrics.token_set_scores(guess.tokens, truth.heldout_tokens)
        own = metrics.token_set_scores(guess.tokens, truth.train_tokens)
        matched = metrics.token_set_scores(guess.tokens, truth.matched_tokens)
        # Generic review vocabulary is as likely in held-out reviews as in training ones; only
        # the excess over an equal number of held-out reviews is evidence of the training data.
        return {
            "rouge_l": sum(best) / len(best) if best else 0.0,
            "token_precision": own["precision"],
            "token_recall": own["recall"],
            "token_precision_matched": matched["precision"],
            "token_precision_heldout": held["precision"],
            "token_precision_lift": matched["precision"] - held["precision"],
        }
    raise TypeError(f"unknown guess type {type(guess).__name__}")


def run_cell(cfg: AttackConfig, a: int, d: DefenseSpec, data: EvalData, tokenizer, run_dir: Path, n_layers: int,
             progress: Callable[[str], None] = lambda s: None) -> dict:  # fmt: skip
    """Train one cell under its defense and run every applicable attack on it."""
    cut = resolve_cut(cfg, n_layers, a)
    key = cell_key(a, d)
    trained = train_cell(cfg, cut, d, data, run_dir / "cells" / key.replace("/", "_"), progress)
    truth = _truth(data, tokenizer)
    view = _view(cfg, cut, d, data, tokenizer, trained, truth)
    results = {}
    model_cuts = cfg.attacks.model_cuts
    options = attack_options(cfg)
    for attack_cls in attacks_for(cfg.attacks.names):
        if attack_cls.target in ("update", "model") and model_cuts and a not in model_cuts:
            continue
        progress(f"attack {attack_cls.name}")
        t0 = time.perf_counter()
        try:
            guess = build(attack_cls, options).run(view)
            results[attack_cls.name] = {"target": attack_cls.target, **score(guess, truth, tokenizer)}
        except Exception as err:  # one failing attack must not lose the cell
            results[attack_cls.name] = {"target": attack_cls.target, "error": f"{type(err).__name__}: {err}"}
        results[attack_cls.name]["seconds"] = round(time.perf_counter() - t0, 2)
        if attack_cls.name == "update-inversion":
            results[attack_cls.name]["clients"] = trained.clients
    epsilon = {k: _finite(v) for k, v in trained.epsilon.items()}
    ppl_generation = None
    if options.generation.new_tokens > 0:
        generation = attack_generation(cfg, d, data, tokenizer, trained, view, truth, progress)
        if generation is not None:
            epsilon["generation"] = _finite(generation.pop("epsilon"))
            ppl_generation = generation.pop("ppl")
            results.update(generation)
    level = max(d.activation_noise_multiplier, d.activation_epsilon and 1 / d.activation_epsilon,
                d.gradient_noise_multiplier, d.gradient_epsilon and 1 / d.gradient_epsilon,
                d.dpsgd_epsilon and 1 / d.dpsgd_epsilon)  # fmt: skip
    return {
        "key": key,
        "cut": a,
        "defense": d.name,
        "family": d.family,
        "level": float(level),
        "clip": trained.clip,
        "epsilon": epsilon,
        "ppl": trained.ppl,
        "ppl_before": trained.ppl_before,
        "ppl_generation": ppl_generation,  # held-out, with generation's releases (None: not measured)
        "attacks": results,
        "seconds": round(trained.seconds + sum(r["seconds"] for r in results.values()), 1),
    }


GENERATION = "@generation"  # suffix of an activation attack's name when it attacks split generation


def attack_generation(cfg, d: DefenseSpec, data: EvalData, tokenizer, trained: Trained, view: AttackerView,
                      truth: Truth, progress: Callable[[str], None]) -> dict | None:  # fmt: skip
    """The activation attacks on what the server receives while the victim generates from held-out
    prompts (`splitfed.eval.generation`): ``name@generation`` -> scores, and the per-prompt epsilon."""
    from splitfed.eval.generation import observe_generation, perplexity_as_generated, prompts_of
    from splitfed.eval.train import wire_round_trip

    attacks = [a for a in attacks_for(cfg.attacks.names) if a.target == "activations"]
    if not attacks:
        return None
    o = cfg.attacks.generation
    progress("generation")
    trip = wire_round_trip(d.compression)
    wire = (lambda h: trip("activation", h)) if trip is not None else (lambda h: h)
    prompts = prompts_of(data.heldout[: len(truth.texts)], o.prompt_tokens, data.pad)
    seen = observe_generation(
        trained.split, trained.run_config, prompts, new_tokens=o.new_tokens, pad=data.pad, eos=None,
        wire=wire, seed=cfg.train.seed,
    )  # fmt: skip
    decode = _decoder(tokenizer)
    m = seen.released.mask.bool()
    gen_truth = dataclasses.replace(
        truth, ids=seen.ids, mask=seen.released.mask, texts=[decode(seen.ids[r][m[r]]) for r in range(len(m))]
    )
    gen_view = dataclasses.replace(
        view, activations=seen.released, release_activations=seen.release, prompt_positions=prompts[0].shape[1]
    )
    progress("perplexity under generation's noise")
    ppl = perplexity_as_generated(trained.split, data.heldout, data.pad, seen.victim_release)
    out: dict = {"epsilon": seen.epsilon, "ppl": ppl}
    for attack_cls in attacks:
        name = attack_cls.name + GENERATION
        progress(f"attack {name}")
        t0 = time.perf_counter()
        try:
            guess = build(attack_cls, attack_options(cfg)).run(gen_view)
            out[name] = {"target": "generation", **score(guess, gen_truth, tokenizer)}
        except Exception as err:  # one failing attack must not lose the cell
            out[name] = {"target": "generation", "error": f"{type(err).__name__}: {err}"}
        out[name]["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def run(cfg: AttackConfig, run_dir: str | os.PathLike, *, restart: bool = False, show_progress: bool = True) -> dict:
    """Run (or resume) every cell of `cfg` into `run_dir`; returns the results record."""
    from tqdm.auto import tqdm
    from transformers import AutoConfig

    from splitfed.models import load_tokenizer, prepare

    run_dir = Path(run_dir)
    results = open_run(cfg, run_dir, restart=restart)
    path = prepare(cfg.model.name)
    tokenizer = load_tokenizer(path)
    n_layers = int(AutoConfig.from_pretrained(path).num_hidden_layers)
    attacks_for(cfg.attacks.names)  # names and cuts are checked before hours of work
    for a in cfg.model.cuts:
        resolve_cut(cfg, n_layers, a)
    results["setting"] = setting(cfg, n_layers)
    done = {c["key"] for c in results["cells"]}
    todo = [(a, d) for a, d in cfg.cells() if cell_key(a, d) not in done]
    data = load_eval_data(cfg, tokenizer)
    if "base" not in results:  # once per run (the config is fixed per run directory), kept on resume
        cut = resolve_cut(cfg, n_layers, cfg.model.cuts[0])
        results["base"] = {"model": cfg.model.name, "ppl": base_perplexity(cfg, cut, data)}
        _atomic_json(run_dir / RESULTS, results)
    bar = tqdm(total=len(cfg.cells()), initial=len(done), desc="cells", disable=not show_progress, unit="cell")
    for a, d in todo:
        key = cell_key(a, d)
        bar.set_description(key)
        cell = run_cell(cfg, a, d, data, tokenizer, run_dir, n_layers, lambda s: bar.set_postfix_str(s, refresh=True))
        results["cells"].append(cell)
        _atomic_json(run_dir / RESULTS, results)
        bar.update(1)
    bar.close()
    _atomic_json(run_dir / RESULTS, results)
    return results
