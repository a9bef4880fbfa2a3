"""Assignment 7, "The whole language model": what is graded, on which inputs, for how many points.

The student writes a Llama-style language model and its training from the formulas: RMSNorm
(``rms_norm``), rotary positions with an offset (``rotary``), the SwiGLU MLP (``swiglu``),
the pre-norm block (``Block``, a module on fixed weights), the model with tied embeddings
(``LanguageModel``), cross-entropy from log-sum-exp (``cross_entropy``), one AdamW update
(``adamw_update``), which parameters are decayed (``weight_decay_mask``), the warm-up and
cosine schedule (``lr_at``), clipping by the global norm (``clip_by_global_norm``, graded
through the notebook's given ``clip_rows``), and the training loop with a checkpoint and a
resume (``train``, graded through the notebook's given ``run_with_interruption``). Then the
student trains the model on assignment 3's HMM language and is graded, as there, by the
held-out loss against the Bayes-optimal loss (``genlab.properties.gpt.heldout_loss``).

References are genlab's: ``nn.RMSNorm`` as ``genlab.decoder.make_norm`` builds it,
``rotary_cos_sin`` and ``apply_rotary`` (channel i pairs with i + D/2, as transformers'
Llama), ``MLP``, ``Block`` and ``GPT`` with Llama's switches, ``genlab.train``'s ``AdamW``,
``parameter_groups``, ``lr_at``, ``clip_grad_norm`` and ``train``. The known bugs are
written here as a student would slip.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import genlab.properties.language_model  # noqa: F401  (registers the test models "genlab:lm07_*")
from autograder.spec import Assignment, CaseSpec, check_maker
from autograder.specs.a03_gpt import heldout_check  # assignment 3's language, margin and property
from genlab.decoder import GPT, MLP, Block, GPTConfig, apply_rotary, lm_loss, make_norm, rotary_cos_sin
from genlab.train import AdamW, TrainConfig, clip_grad_norm, lr_at, parameter_groups, train

_HERE = "autograder.specs.a07_language_model"
BETAS = (0.9, 0.95)  # the notebook's AdamW betas and eps (genlab.train's defaults)
ADAM_EPS = 1e-8
CLIP_EPS = 1e-6  # the clipping factor is max_norm / (norm + 1e-6), as torch's


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------ references


def reference_rms_norm(x, weight, eps):
    norm = make_norm(GPTConfig(n_embd=x.shape[-1], n_head=1, norm="rmsnorm", layer_norm_epsilon=eps))
    with torch.no_grad():
        norm.weight.copy_(weight)
    return norm.to(x.dtype)(x)


def _rotary_tables(T: int, D: int, offset: int, theta: float, dtype, device):
    positions = torch.arange(offset, offset + T, device=device)[None]  # (1, T)
    return rotary_cos_sin(positions, D, theta, dtype)  # (1, 1, T, D) each


def reference_rotary(x, offset, theta):
    """x (B, H, T, D) turned by the positions offset .. offset + T - 1."""
    return apply_rotary(x, *_rotary_tables(x.shape[-2], x.shape[-1], offset, theta, x.dtype, x.device))


def _swiglu_mlp(w_gate, w_up, w_down) -> MLP:
    inner, C = w_gate.shape
    mlp = MLP(GPTConfig(n_embd=C, n_head=1, n_inner=inner, mlp="swiglu", bias=False)).to(w_gate.dtype)
    with torch.no_grad():
        mlp.c_fc.weight.copy_(torch.cat((w_gate, w_up)))  # rows: gate, then up
        mlp.c_proj.weight.copy_(w_down)
    return mlp.to(w_gate.device)


def reference_swiglu(x, w_gate, w_up, w_down):
    return _swiglu_mlp(w_gate, w_up, w_down)(x)


class ReferenceBlock(Block):
    """genlab's pre-norm block under the notebook's interface: ``forward(x)`` -> x, causal,
    positions 0 .. T-1."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.config = config

    def forward(self, x):
        tables = _rotary_tables(x.shape[1], self.config.head_dim, 0, self.config.rope_theta, x.dtype, x.device)
        return super().forward(x, is_causal=True, rotary=tables)[0]


def reference_cross_entropy(logits, targets):
    return F.cross_entropy(logits, targets)


def reference_adamw_update(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """genlab's AdamW, one update of one parameter from the given state (``step`` counts
    this update: 1 for the first)."""
    p = torch.nn.Parameter(param.clone())
    optimizer = AdamW([p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    optimizer.state[p] = {"step": step - 1, "exp_avg": exp_avg.clone(), "exp_avg_sq": exp_avg_sq.clone()}
    p.grad = grad.clone()
    optimizer.step()
    state = optimizer.state[p]
    return p.detach(), state["exp_avg"], state["exp_avg_sq"]


def reference_weight_decay_mask(model):
    decayed = {id(p) for p in parameter_groups(model, weight_decay=1.0)[0]["params"]}
    return torch.tensor([id(p) in decayed for _, p in model.named_parameters()])


def reference_lr_at(step, lr, warmup_steps, steps, min_lr_ratio):
    return lr_at(step, TrainConfig(steps=steps, lr=lr, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio))


def _as_parameters(grads):
    """Each row of grads (P, N) the gradient of one parameter."""
    parameters = [torch.nn.Parameter(torch.zeros_like(row)) for row in grads]
    for parameter, row in zip(parameters, grads):
        parameter.grad = row.clone()
    return parameters


def reference_clip_rows(grads, max_norm):
    parameters = _as_parameters(grads)
    norm = clip_grad_norm(parameters, max_norm)
    return torch.stack([p.grad for p in parameters]), norm


def _next_token_loss(model, batch):
    return lm_loss(model(batch), batch)


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _config(steps, lr, warmup_steps, min_lr_ratio, weight_decay, max_norm) -> TrainConfig:
    return TrainConfig(steps=steps, lr=lr, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio,
                       weight_decay=weight_decay, grad_clip=max_norm, betas=BETAS, optimizer="genlab")


@torch.enable_grad()  # checks call their functions under torch.no_grad()
def reference_run_with_interruption(model, batches, lr, warmup_steps, min_lr_ratio, weight_decay, max_norm,
                                    interrupt_at):
    """genlab's train on batches (S, B, T), step s on batches[s]; interrupted after
    ``interrupt_at`` steps (0: never) and resumed from its checkpoint into a fresh copy of
    the initial model. -> (the parameters at the end, flat; the lr of every step (S,))."""
    cfg = _config(len(batches), lr, warmup_steps, min_lr_ratio, weight_decay, max_norm)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.pt"
        first = copy.deepcopy(model)
        if interrupt_at:
            # the run that was interrupted: its checkpoint after interrupt_at updates
            _interrupted_run(first, batches, cfg, path, interrupt_at)
            model = copy.deepcopy(model)
            history = train(model, lambda step, g: batches[step], _next_token_loss, cfg, progress=False,
                            checkpoint_path=path, resume=True)
        else:
            model = first
            history = train(model, lambda step, g: batches[step], _next_token_loss, cfg, progress=False)
    return _flat(model), torch.tensor(history.lr, dtype=torch.float64)


class _Interrupted(Exception):
    pass


def _interrupted_run(model, batches, cfg, path, interrupt_at):
    """genlab's train, stopped right after the checkpoint of update ``interrupt_at``
    (checkpoints every ``interrupt_at`` updates; the batch of the next step raises)."""
    def batch(step, generator):
        if step == interrupt_at:
            raise _Interrupted
        return batches[step]

    try:
        train(model, batch, _next_token_loss, cfg, progress=False, checkpoint_path=path,
              checkpoint_every=interrupt_at)
    except _Interrupted:
        pass


# ------------------------------------------------------------------------- known bugs


def rms_norm_eps_outside_sqrt(x, weight, eps):
    return x / (x.pow(2).mean(dim=-1, keepdim=True).sqrt() + eps) * weight


def rotary_interleaved(x, offset, theta):
    """Pairs of neighbours (2i, 2i + 1), as the RoFormer paper, with the same angles."""
    T, D = x.shape[-2], x.shape[-1]
    cos, sin = _rotary_tables(T, D, offset, theta, x.dtype, x.device)
    cos, sin = cos[..., : D // 2], sin[..., : D // 2]  # (1, 1, T, D/2): the angle of pair i
    even, odd = x[..., 0::2], x[..., 1::2]
    turned = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1)  # (..., D/2, 2)
    return turned.flatten(-2)


def rotary_offset_ignored(x, offset, theta):
    return reference_rotary(x, 0, theta)


def swiglu_gate_on_up(x, w_gate, w_up, w_down):
    """silu on the "up" branch, the gate branch left linear."""
    return reference_swiglu(x, w_up, w_gate, w_down)


class UntiedGPT(GPT):
    """genlab's GPT with an output layer of its own: loads lm_head.weight apart from wte."""

    def __init__(self, config: GPTConfig):
        super().__init__(dataclasses.replace(config, tie_word_embeddings=False))


def adamw_no_bias_correction(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    param = param * (1 - lr * weight_decay)
    m = beta1 * exp_avg + (1 - beta1) * grad
    v = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    return param - lr * m / (v.sqrt() + eps), m, v


def adamw_l2_coupled(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """The decay added to the gradient (L2 regularisation, Adam's way), not to the parameter."""
    return reference_adamw_update(param, grad + weight_decay * param, exp_avg, exp_avg_sq, step, lr, beta1,
                                  beta2, eps, 0.0)


def decay_mask_everything(model):
    return torch.ones(len(list(model.named_parameters())), dtype=torch.bool)


def decay_mask_matrices_and_embeddings(model):
    return torch.tensor([p.ndim >= 2 for _, p in model.named_parameters()])


def lr_at_warmup_off_by_one(step, lr, warmup_steps, steps, min_lr_ratio):
    if step < warmup_steps:
        return lr * step / warmup_steps
    return reference_lr_at(step, lr, warmup_steps, steps, min_lr_ratio)


def clip_rows_per_parameter(grads, max_norm):
    parameters = _as_parameters(grads)
    norm = torch.linalg.vector_norm(grads)
    for p in parameters:
        p.grad.mul_(torch.clamp(max_norm / (p.grad.norm() + CLIP_EPS), max=1.0))
    return torch.stack([p.grad for p in parameters]), norm


@torch.enable_grad()
def run_with_schedule_restarted(model, batches, lr, warmup_steps, min_lr_ratio, weight_decay, max_norm,
                                interrupt_at):
    """genlab's pieces in a loop whose resumed part runs the schedule from step 0 again."""
    cfg = _config(len(batches), lr, warmup_steps, min_lr_ratio, weight_decay, max_norm)
    model = copy.deepcopy(model)
    optimizer = AdamW(parameter_groups(model, weight_decay), lr=lr, betas=BETAS, eps=ADAM_EPS)
    lrs = []
    for step in range(len(batches)):
        rate = lr_at(step - interrupt_at if interrupt_at and step >= interrupt_at else step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = rate
        loss = _next_token_loss(model, batches[step])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(list(model.parameters()), max_norm)
        optimizer.step()
        lrs.append(rate)
    return _flat(model), torch.tensor(lrs, dtype=torch.float64)


RMS_NORM_BUGS = {
    "eps_outside_sqrt": (f"{_HERE}.rms_norm_eps_outside_sqrt",
                         "eps is added outside the square root: RMSNorm divides by sqrt(mean(x^2) + eps), "
                         "not by sqrt(mean(x^2)) + eps (the two differ where mean(x^2) is small)"),
}
ROTARY_BUGS = {
    "interleaved": (f"{_HERE}.rotary_interleaved",
                    "you turned neighbouring channels (2i, 2i + 1) together, as the RoFormer paper writes "
                    "it; here, as in transformers' Llama, channel i pairs with channel i + D/2 (the two "
                    "halves of the head: x1 = x[..., :D/2], x2 = x[..., D/2:])"),
    "offset_ignored": (f"{_HERE}.rotary_offset_ignored",
                       "the positions start at 0 although offset > 0: with a cache the T new tokens sit "
                       "at positions offset, offset + 1, ..., offset + T - 1"),
}
SWIGLU_BUGS = {
    "gate_on_up": (f"{_HERE}.swiglu_gate_on_up",
                   "the SiLU is on the wrong branch: silu(x W_gate^T) * (x W_up^T), the gate goes "
                   "through SiLU and the up projection stays linear"),
}
MODEL_BUGS = {
    "untied": (f"{_HERE}.UntiedGPT",
               "your output layer is a matrix of its own: tie it to the token embeddings "
               "(self.lm_head.weight = self.transformer.wte.weight), one (V, C) matrix both embeds "
               "the tokens and scores them"),
}
ADAMW_BUGS = {
    "no_bias_correction": (f"{_HERE}.adamw_no_bias_correction",
                           "the bias correction is missing: m and v start at 0, so divide them by "
                           "(1 - beta1^t) and (1 - beta2^t), t the number of this update (1 for the first)"),
    "l2_coupled": (f"{_HERE}.adamw_l2_coupled",
                   "you added weight_decay * param to the gradient (L2 regularisation, which Adam then "
                   "rescales); AdamW decays the parameter itself, decoupled from the gradient: "
                   "param * (1 - lr * weight_decay), before the Adam step"),
}
MASK_BUGS = {
    "everything": (f"{_HERE}.decay_mask_everything",
                   "you decay every parameter: norms' gains and biases must not be decayed (pulling a gain "
                   "towards 0 switches a feature off), nor the embedding table; decay the weight matrices "
                   "only"),
    "embeddings": (f"{_HERE}.decay_mask_matrices_and_embeddings",
                   "you decay the embedding table (and the output layer tied to it): it is 2-d but not a "
                   "weight matrix of a linear map; a rare token's embedding would shrink just for being rare"),
}
LR_BUGS = {
    "warmup_off_by_one": (f"{_HERE}.lr_at_warmup_off_by_one",
                          "the warm-up is off by one: step s (0-based) of the warm-up runs at "
                          "lr * (s + 1) / warmup_steps, so that no step runs at lr 0 and step "
                          "warmup_steps - 1 reaches the peak"),
}
CLIP_BUGS = {
    "per_parameter": (f"{_HERE}.clip_rows_per_parameter",
                      "you clipped each parameter's gradient on its own; clip by the GLOBAL norm: one norm "
                      "over all gradients taken as one vector, one factor min(1, max_norm / (norm + 1e-6)) "
                      "for all of them (that keeps the direction of the whole update)"),
}
RUN_BUGS = {
    "schedule_restarted": (f"{_HERE}.run_with_schedule_restarted",
                           "the resumed run started the schedule again (warm-up from step 0): save the "
                           "number of steps done in the checkpoint and continue the schedule from there"),
}

# ------------------------------------------------------------------------------ cases


def tensors_case(seed: int, shapes: dict, kind: str = "", dtype: str = "float32", scale: dict | None = None,
                 **numbers) -> CaseSpec:
    """Seeded standard-normal tensors of the given shapes (times ``scale[name]``), and numbers."""
    def make():
        g = _gen(seed)
        out = {name: torch.randn(shape, generator=g, dtype=getattr(torch, dtype)) * (scale or {}).get(name, 1.0)
               for name, shape in shapes.items()}
        return {**out, **numbers}

    meta = {**{name: list(shape) for name, shape in shapes.items()}, **numbers, "seed": seed}
    if dtype != "float32":
        meta["dtype"] = dtype
    return CaseSpec(make=make, meta=meta, kind=kind)


def rms_norm_case(seed: int, shape=(2, 5, 8), eps=1e-5, x_scale=1.0, dtype="float32") -> CaseSpec:
    """x scaled by ``x_scale``: small activations make eps matter (mean(x^2) near eps)."""
    case = tensors_case(seed, {"x": shape, "weight": shape[-1:]}, dtype=dtype, scale={"x": x_scale}, eps=eps)
    case.meta["x scale"] = x_scale
    case.kind = "small activations" if x_scale < 0.1 else ""
    return case


def rotary_case(seed: int, shape=(2, 2, 5, 8), offset=0, theta=10000.0, dtype="float32") -> CaseSpec:
    return tensors_case(seed, {"x": shape}, kind="offset" if offset else "", dtype=dtype, offset=offset,
                        theta=theta)


def swiglu_case(seed: int, B=2, T=4, C=8, inner=12, dtype="float32") -> CaseSpec:
    return tensors_case(seed, {"x": (B, T, C), "w_gate": (inner, C), "w_up": (inner, C), "w_down": (C, inner)},
                        dtype=dtype, scale={"w_gate": C ** -0.5, "w_up": C ** -0.5, "w_down": inner ** -0.5})


def module_case(seed: int, config: dict, x_shape=None, vocab_ids=None, differ_head: bool = False) -> CaseSpec:
    """Fixed seeded weights for a genlab module with Llama's switches (GPTConfig ``config``),
    and its input: x (B, T, C) for a block, input_ids (B, T) for a model. ``differ_head``:
    lm_head.weight stored with values of its own (a tied model keeps one matrix, the one
    loaded last: lm_head's); otherwise equal to wte's."""
    full = {"norm": "rmsnorm", "position_embedding": "rotary", "mlp": "swiglu", "bias": False, **config}

    def make():
        g = _gen(seed)
        model = (Block if x_shape else GPT)(GPTConfig(**full))
        inputs = {"__module__": json.dumps({"config_class": "genlab.decoder.GPTConfig", "config": full},
                                           sort_keys=True)}
        state = {}
        for name, value in model.state_dict().items():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                state[name] = 1.0 + 0.3 * torch.randn(value.shape, generator=g)  # gains near 1
            elif name == "lm_head.weight" and not differ_head:
                state[name] = state["transformer.wte.weight"].clone()
            else:
                state[name] = torch.randn(value.shape, generator=g) / math.sqrt(value.shape[-1])
        inputs.update({f"__state__.{name}": value for name, value in state.items()})
        if x_shape:
            inputs["x"] = torch.randn(x_shape, generator=g)
        else:
            inputs["input_ids"] = torch.randint(full["vocab_size"], vocab_ids, generator=g)
        return inputs

    meta = {k: v for k, v in config.items() if k in ("n_embd", "n_head", "n_inner", "rope_theta", "vocab_size",
                                                    "n_layer")}
    meta.update({"input": list(x_shape or vocab_ids), "seed": seed})
    if differ_head:
        meta["lm_head.weight"] = "stored apart from wte.weight"
    return CaseSpec(make=make, meta=meta, kind="tied" if differ_head else "")


def cross_entropy_case(seed: int, N=6, V=10, spread=2.0, dtype="float32") -> CaseSpec:
    def make():
        g = _gen(seed)
        return {"logits": torch.randn(N, V, generator=g, dtype=getattr(torch, dtype)) * spread,
                "targets": torch.randint(V, (N,), generator=g)}

    meta = {"N": N, "V": V, "logit scale": spread, "seed": seed} | ({"dtype": dtype} if dtype != "float32" else {})
    return CaseSpec(make=make, meta=meta, kind="huge logits" if spread >= 1000 else "")


def adamw_case(seed: int, shape=(3, 4), step=1, lr=1e-2, weight_decay=0.1, dtype="float64") -> CaseSpec:
    """One update of a parameter; for step > 1 a state (m, v) as earlier updates leave it."""
    def make():
        g = _gen(seed)
        dt = getattr(torch, dtype)
        param, grad = torch.randn(shape, generator=g, dtype=dt), torch.randn(shape, generator=g, dtype=dt)
        if step == 1:
            m, v = torch.zeros(shape, dtype=dt), torch.zeros(shape, dtype=dt)
        else:
            m = 0.1 * torch.randn(shape, generator=g, dtype=dt)
            v = 0.05 * torch.rand(shape, generator=g, dtype=dt)
        return {"param": param, "grad": grad, "exp_avg": m, "exp_avg_sq": v, "step": step, "lr": lr,
                "beta1": BETAS[0], "beta2": BETAS[1], "eps": ADAM_EPS, "weight_decay": weight_decay}

    meta = {"shape": list(shape), "step": step, "lr": lr, "weight_decay": weight_decay, "seed": seed}
    if dtype != "float64":
        meta["dtype"] = dtype
    return CaseSpec(make=make, meta=meta, kind="later update" if step > 1 else "")


def mask_case(model: str) -> CaseSpec:
    return CaseSpec(make=lambda: {"model": f"genlab:{model}"}, meta={"model": model},
                    kind="untied" if "untied" in model else "")


def lr_case(step: int, lr=1e-2, warmup_steps=4, steps=20, min_lr_ratio=0.1) -> CaseSpec:
    kind = "warm-up" if step < warmup_steps else "decay"
    return CaseSpec(make=lambda: {"step": step, "lr": lr, "warmup_steps": warmup_steps, "steps": steps,
                                  "min_lr_ratio": min_lr_ratio},
                    meta={"step": step, "lr": lr, "warmup_steps": warmup_steps, "steps": steps,
                          "min_lr_ratio": min_lr_ratio}, kind=kind)


def clip_case(seed: int, norms: tuple[float, ...], N=6, max_norm=1.0) -> CaseSpec:
    """One gradient per row, row i of norm norms[i]."""
    def make():
        rows = torch.randn(len(norms), N, generator=_gen(seed))
        rows = rows / rows.norm(dim=1, keepdim=True) * torch.tensor(norms)[:, None]
        return {"grads": rows, "max_norm": max_norm}

    total = math.sqrt(sum(n * n for n in norms))
    return CaseSpec(make=make, meta={"row norms": list(norms), "max_norm": max_norm, "seed": seed},
                    kind="" if total > max_norm else "under the limit")


def training_case(seed: int, model: str, steps: int, interrupt_at: int, B=4, T=8, lr=2e-2, warmup_steps=3,
             min_lr_ratio=0.1, weight_decay=0.1, max_norm=0.5) -> CaseSpec:
    from genlab.properties.language_model import TEST_MODELS

    def make():
        batches = torch.randint(TEST_MODELS[model]["vocab_size"], (steps, B, T), generator=_gen(seed))
        return {"model": f"genlab:{model}", "batches": batches, "lr": lr, "warmup_steps": warmup_steps,
                "min_lr_ratio": min_lr_ratio, "weight_decay": weight_decay, "max_norm": max_norm,
                "interrupt_at": interrupt_at}

    meta = {"model": model, "steps": steps, "batch": [B, T], "lr": lr, "warmup_steps": warmup_steps,
            "min_lr_ratio": min_lr_ratio, "weight_decay": weight_decay, "max_norm": max_norm,
            "interrupt_at": interrupt_at, "seed": seed}
    return CaseSpec(make=make, meta=meta, kind="resumed" if interrupt_at else "")


# ------------------------------------------------------------------------------ checks

NORM_CALLS = ("torch.nn.RMSNorm", "torch.nn.functional.rms_norm", "torch.rms_norm", "genlab.decoder.make_norm")
ROTARY_CALLS = ("genlab.decoder.rotary_cos_sin", "genlab.decoder.apply_rotary")
MLP_CALLS = ("genlab.decoder.MLP",)
BLOCK_CALLS = (*NORM_CALLS, *ROTARY_CALLS, *MLP_CALLS, "genlab.decoder.Block", "genlab.decoder.CausalSelfAttention")
MODEL_CALLS = (*BLOCK_CALLS, "genlab.decoder.GPT")
LOSS_CALLS = ("torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss",
              "torch.nn.functional.log_softmax", "torch.log_softmax", "torch.Tensor.log_softmax",
              "torch.logsumexp", "torch.Tensor.logsumexp", "torch.special.logsumexp",
              "torch.nn.CrossEntropyLoss", "torch.nn.NLLLoss", "genlab.decoder.lm_loss")
OPTIMIZER_CALLS = ("torch.optim.AdamW", "torch.optim.Adam", "torch.optim.SGD", "genlab.train.AdamW",
                   "genlab.train.train")
MASK_CALLS = ("genlab.train.parameter_groups",)
SCHEDULE_CALLS = ("torch.optim.lr_scheduler.LambdaLR", "torch.optim.lr_scheduler.LinearLR",
                  "torch.optim.lr_scheduler.CosineAnnealingLR", "torch.optim.lr_scheduler.SequentialLR",
                  "torch.optim.lr_scheduler.OneCycleLR", "genlab.train.lr_at")
CLIP_CALLS = ("torch.nn.utils.clip_grad_norm_", "torch.nn.utils.clip_grad_norm",
              "torch.nn.utils.get_total_norm", "torch.nn.utils.clip_grads_with_norm_",
              "genlab.train.clip_grad_norm", "genlab.train.global_grad_norm", "genlab.train.clip_gradients")
# the loop uses the student's own pieces: every piece above is forbidden in it
TRAIN_CALLS = (*LOSS_CALLS, *OPTIMIZER_CALLS, *MASK_CALLS, *SCHEDULE_CALLS, *CLIP_CALLS)

PER_FUNCTION = {
    "rms_norm": dict(cell="test_rms_norm", reference=f"{_HERE}.reference_rms_norm", forbidden=NORM_CALLS,
                     bugs=RMS_NORM_BUGS),
    "rotary": dict(cell="test_rotary", reference=f"{_HERE}.reference_rotary", forbidden=ROTARY_CALLS,
                   bugs=ROTARY_BUGS),
    "swiglu": dict(cell="test_swiglu", reference=f"{_HERE}.reference_swiglu", forbidden=MLP_CALLS,
                   bugs=SWIGLU_BUGS),
    "Block": dict(cell="test_block", reference=f"{_HERE}.ReferenceBlock", forbidden=BLOCK_CALLS),
    "LanguageModel": dict(cell="test_language_model", reference="genlab.decoder.GPT", outputs=("logits",),
                          forbidden=MODEL_CALLS, bugs=MODEL_BUGS),
    "cross_entropy": dict(cell="test_cross_entropy", reference=f"{_HERE}.reference_cross_entropy",
                          outputs=("loss",), forbidden=LOSS_CALLS),
    "adamw_update": dict(cell="test_adamw", reference=f"{_HERE}.reference_adamw_update", dtype="float64",
                         outputs=("param", "exp_avg", "exp_avg_sq"), forbidden=OPTIMIZER_CALLS, bugs=ADAMW_BUGS),
    "weight_decay_mask": dict(cell="test_weight_decay_mask", reference=f"{_HERE}.reference_weight_decay_mask",
                              dtype="bool", compare="exact", outputs=("decayed",), forbidden=MASK_CALLS,
                              bugs=MASK_BUGS),
    "lr_at": dict(cell="test_lr_at", reference=f"{_HERE}.reference_lr_at", dtype="float64", outputs=("lr",),
                  forbidden=SCHEDULE_CALLS, bugs=LR_BUGS),
    "clip_rows": dict(cell="test_clip", reference=f"{_HERE}.reference_clip_rows", outputs=("grads", "norm"),
                      forbidden=CLIP_CALLS, bugs=CLIP_BUGS),
    "run_with_interruption": dict(cell="test_train", reference=f"{_HERE}.reference_run_with_interruption",
                                  outputs=("parameters", "lrs"), forbidden=TRAIN_CALLS, bugs=RUN_BUGS),
}

check = check_maker(PER_FUNCTION)


# eps 1e-3: an RMSNorm with eps outside the root is then wrong beyond the tolerance in the block
# and the model too, on every machine (at 1e-5 it sits at the edge of the tolerance)
BLOCK_CONFIG = dict(vocab_size=8, n_positions=32, n_embd=16, n_head=2, n_layer=1, n_inner=24, layer_norm_epsilon=1e-3)
MODEL_CONFIG = dict(vocab_size=11, n_positions=32, n_embd=16, n_head=2, n_layer=2, n_inner=20, layer_norm_epsilon=1e-3)

SPEC = Assignment(
    name="07_language_model",
    notebook="language_model.ipynb",
    # the data's own optimum, shown beside the trained model's loss
    notebook_uses=("genlab.data.HMMLanguage.next_token_loss",),
    # the trained model is graded as assignment 3's, on held-out sets of its own
    checks=[
        # --- the pieces of a block
        check("rms_norm", "rms_norm", True,
              [rms_norm_case(0), rms_norm_case(1, shape=(3, 6), eps=1e-2, x_scale=0.05)],
              "x / sqrt(mean(x^2) + eps) * weight, over the last axis; small activations, where eps matters"),
        check("rms_norm.hidden", "rms_norm", False,
              [rms_norm_case(2, shape=(4, 16), dtype="float64"),
               rms_norm_case(3, shape=(2, 3, 5), eps=0.05, x_scale=0.02)],
              "float64; another eps on small activations"),
        check("rotary", "rotary", True,
              [rotary_case(0), rotary_case(1, shape=(1, 3, 4, 6), theta=100.0)],
              "positions 0 .. T-1; channel i turns with channel i + D/2", points=2),
        check("rotary.offset", "rotary", True, [rotary_case(2, shape=(2, 2, 3, 8), offset=5)],
              "new tokens after a cache of 5: positions 5, 6, 7"),
        check("rotary.hidden", "rotary", False,
              [rotary_case(3, shape=(1, 4, 7, 16), theta=500.0, dtype="float64"),
               rotary_case(4, shape=(2, 1, 1, 4), offset=11)],
              "float64 with another theta; one new token at position 11", points=2),
        check("swiglu", "swiglu", True, [swiglu_case(0), swiglu_case(1, B=1, T=3, C=6, inner=10)],
              "down(silu(x W_gate^T) * (x W_up^T))"),
        check("swiglu.hidden", "swiglu", False, [swiglu_case(2, B=3, T=2, C=4, inner=16, dtype="float64")],
              "float64, another width"),
        check("Block", "Block", True,
              [module_case(0, BLOCK_CONFIG, x_shape=(2, 5, 16)),
               module_case(1, {**BLOCK_CONFIG, "n_head": 4, "rope_theta": 100.0}, x_shape=(1, 7, 16))],
              "the pre-norm block on fixed weights: causal attention with rotary q and k, SwiGLU MLP",
              points=3),
        check("Block.hidden", "Block", False,
              [module_case(2, {**BLOCK_CONFIG, "n_embd": 12, "n_head": 3, "n_inner": 8}, x_shape=(3, 4, 12))],
              "three heads, another width"),
        check("LanguageModel", "LanguageModel", True,
              [module_case(3, MODEL_CONFIG, vocab_ids=(2, 6)),
               module_case(4, MODEL_CONFIG, vocab_ids=(2, 6), differ_head=True)],
              "logits (B, T, V) of the whole model; the output layer tied to the token embeddings", points=2),
        check("LanguageModel.hidden", "LanguageModel", False,
              [module_case(5, {**MODEL_CONFIG, "n_layer": 1, "vocab_size": 7}, vocab_ids=(3, 4), differ_head=True)],
              "another model, tied"),
        # --- the loss
        check("cross_entropy", "cross_entropy", True,
              [cross_entropy_case(0), cross_entropy_case(1, N=4, V=7, spread=1e4)],
              "mean -log softmax(logits)[target]; logits of size 1e4, where a naive softmax overflows",
              points=2),
        check("cross_entropy.hidden", "cross_entropy", False,
              [cross_entropy_case(2, N=9, V=30, dtype="float64"), cross_entropy_case(3, N=5, V=12, spread=3e4)],
              "float64; other huge logits"),
        # --- the optimizer
        check("adamw_update", "adamw_update", True,
              [adamw_case(0), adamw_case(1, step=4, lr=3e-2, weight_decay=0.5)],
              "one AdamW update: the first, and the fourth from a given state", points=2),
        check("adamw_update.hidden", "adamw_update", False,
              [adamw_case(2, shape=(5,), step=2, lr=1e-3, weight_decay=0.2),
               adamw_case(3, shape=(2, 2, 3), step=30, lr=0.1, weight_decay=0.05)],
              "other shapes, steps and hyperparameters"),
        check("weight_decay_mask", "weight_decay_mask", True,
              [mask_case("lm07_mask"), mask_case("lm07_mask_untied")],
              "decay the weight matrices; not the norms, biases or embeddings (tied or untied output layer)"),
        check("lr_at", "lr_at", True,
              [lr_case(0), lr_case(3), lr_case(4), lr_case(11), lr_case(19)],
              "linear warm-up from lr / W, the peak at steps W-1 and W, cosine down to the floor at the "
              "last step", points=2),
        check("lr_at.hidden", "lr_at", False,
              [lr_case(0, lr=3e-4, warmup_steps=10, steps=100), lr_case(57, lr=3e-4, warmup_steps=10, steps=100),
               lr_case(9, lr=1.0, warmup_steps=10, steps=11, min_lr_ratio=0.0), lr_case(7, warmup_steps=0, steps=9)],
              "other schedules: a long one, a short one, no warm-up"),
        check("clip_rows", "clip_rows", True,
              [clip_case(0, (3.0, 0.5, 2.0)), clip_case(1, (0.3, 0.4), max_norm=1.0)],
              "one factor for all gradients from their global norm; nothing changes under the limit",
              points=2),
        check("clip_rows.hidden", "clip_rows", False,
              [clip_case(2, (0.1, 5.0, 1.0, 2.5), N=3, max_norm=2.0), clip_case(3, (0.2,), N=9, max_norm=0.5)],
              "other norms and limits"),
        # --- the training loop with a checkpoint
        check("run_with_interruption", "run_with_interruption", True,
              [training_case(0, "lm07_train", steps=8, interrupt_at=0),
               training_case(0, "lm07_train", steps=8, interrupt_at=5)],
              "8 steps straight, and interrupted after 5 then resumed from the checkpoint: the same "
              "parameters and learning rates as genlab's train", points=3),
        check("run_with_interruption.hidden", "run_with_interruption", False,
              [training_case(1, "lm07_train_wide", steps=10, interrupt_at=7, lr=1e-2, warmup_steps=2, max_norm=1.0)],
              "another model, interrupted after 7 of 10 steps", points=2),
        # --- the trained model on held-out sequences of assignment 3's language
        heldout_check("next_token_logprobs", True, seed=1101, n=64, rows=8, t=15, points=3),
        heldout_check("next_token_logprobs.hidden", False, seed=2101, n=256, rows=16, t=7, points=3),
    ],
    samples={
        # solved: the solution cells (by grade_id) that carry the solution; the rest stay blank.
        # lost: the checks it must fail ("all" for every one); it scores all other points.
        "solution": {"solved": "all", "lost": []},
        "blank": {"solved": [], "lost": "all"},
        "partial": {"solved": ["rms_norm", "rotary", "swiglu", "block", "language_model", "cross_entropy"],
                    "lost": ["adamw_update", "adamw_update.hidden", "weight_decay_mask", "lr_at", "lr_at.hidden",
                             "clip_rows", "clip_rows.hidden", "run_with_interruption",
                             "run_with_interruption.hidden", "next_token_logprobs", "next_token_logprobs.hidden"]},
        # eps added to the root mean square, not under the square root
        "eps_outside_sqrt": {"solved": "all", "lost": ["rms_norm", "rms_norm.hidden", "Block", "Block.hidden",
                                                       "LanguageModel", "LanguageModel.hidden"],
                             "edit": {"rms_norm": ["x * torch.rsqrt(mean_square + eps) * weight",
                                                   "x / (mean_square.sqrt() + eps) * weight"]}},
        # the cached positions forgotten: the new tokens turned as if they started at 0
        "rope_offset_ignored": {"solved": "all", "lost": ["rotary.offset", "rotary.hidden"],
                                "edit": {"rotary": ["torch.arange(offset, offset + T,", "torch.arange(0, T,"]}},
        # SiLU on the up projection: the block and the model inherit the slip
        "swiglu_gate_on_up": {"solved": "all",
                              "lost": ["swiglu", "swiglu.hidden", "Block", "Block.hidden", "LanguageModel",
                                       "LanguageModel.hidden"],
                              "edit": {"swiglu": ["F.silu(gate) * up", "gate * F.silu(up)"]}},
        "no_bias_correction": {"solved": "all",
                               "lost": ["adamw_update", "adamw_update.hidden", "run_with_interruption",
                                        "run_with_interruption.hidden"],
                               "edit": {"adamw": ["    m_hat = exp_avg / (1 - beta1 ** step)\n"
                                                  "    v_hat = exp_avg_sq / (1 - beta2 ** step)\n",
                                                  "    m_hat, v_hat = exp_avg, exp_avg_sq\n"]}},
        # L2 regularisation: the decay goes into the gradient that Adam rescales
        "l2_coupled": {"solved": "all",
                       "lost": ["adamw_update", "adamw_update.hidden", "run_with_interruption",
                                "run_with_interruption.hidden"],
                       "edit": {"adamw": ["param = param * (1 - lr * weight_decay)  # decoupled decay, first",
                                          "grad = grad + weight_decay * param"]}},
        # every parameter decayed: norms' gains (and the embeddings) too
        "decay_everything": {"solved": "all",
                             "lost": ["weight_decay_mask", "run_with_interruption", "run_with_interruption.hidden"],
                             "edit": {"weight_decay_mask": ["p.ndim >= 2 and id(p) not in embeddings",
                                                            "p.requires_grad"]}},
        "warmup_off_by_one": {"solved": "all",
                              "lost": ["lr_at", "lr_at.hidden", "run_with_interruption",
                                       "run_with_interruption.hidden"],
                              "edit": {"lr_at": ["lr * (step + 1) / warmup_steps", "lr * step / warmup_steps"]}},
        "clip_per_parameter": {"solved": "all",
                               "lost": ["clip_rows", "clip_rows.hidden", "run_with_interruption",
                                        "run_with_interruption.hidden"],
                               "edit": {"clip": ["g.mul_(factor)",
                                                 "g.mul_(torch.clamp(max_norm / (g.norm() + 1e-6), max=1.0))"]}},
        # the resumed run counts its steps from the checkpoint for the updates, from 0 for the schedule
        "resume_restarts_schedule": {"solved": "all",
                                     "lost": ["run_with_interruption", "run_with_interruption.hidden"],
                                     "edit": {"train": ["rate = lr_at(step, lr,", "rate = lr_at(step - start, lr,"]}},
    },
)
