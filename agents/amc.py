"""AMC (He et al. 2018): a DDPG agent walks the groups in forward order and picks each one's ratio.

SB3's `learn()` owns the environment loop, which the suggest/observe protocol turns inside out:
the accuracy that makes an episode's reward is only known after the driver has evaluated the plan.
So episodes are rolled out by hand at `suggest` time (policy action + our own exploration noise),
and only in `observe` are their transitions written to SB3's replay buffer, with the episode's
reward minus a moving-average baseline on every step (as the reference implementation does), and
trained on with `DDPG.train`.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import DDPG
from stable_baselines3.common.logger import configure

from agents.base import Agent, Candidate, Evaluation, LatencyMode, SearchContext

KIND = {"conv": 0.0, "dwconv": 0.5, "linear": 1.0}
# Steps that are not a layer's width get their own code, so the actor can tell a keep/drop step (a
# block, dropped by an action from half the range up) from a width step. Fine-grained kinds stand
# alone in a space and keep the layer's code.
GRANULARITY_CODE = {"head": 0.25, "block": 0.75}
N_FEATURES = 11  # index, kind, in, out, stride, kernel, params, flops | removed, remaining, previous action
WARMUP_BATCH = 4  # random episodes do not depend on results: several go to the driver at once
POLICY_BATCH = 2  # episodes rolled out with the same policy between two training rounds
CONFIRM_BATCH = 3  # latency budgets: the best episodes' plans timed on the device per round
CONFIRM_MAX = 9  # ... at most this many before the search gives up
WALL_STEPS = 10  # bisection steps of the action wall on the (cheap) estimate
REPAIR_STEPS = 8  # bisection steps on the exact resource when the estimate was too optimistic


class ResourceEstimate:
    """A cheap resource ratio for the action wall, called many times per episode.

    FLOPs/params: each conv/linear layer's cost scaled by the kept fractions of the groups that
    prune its output and input (the lookup table's channel model); everything else (BN, pooling)
    is counted unpruned, so the estimate errs high. Latency: the lookup table itself, already cheap.
    """

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        space = ctx.space
        params = ctx.budget.metric == "params"
        total = space.params if params else space.flops
        self.terms = [(layer, layer.params if params else layer.flops) for layer in space.layers]
        self.residual = max(0.0, total - sum(cost for _, cost in self.terms))
        self.total = float(total)

    def __call__(self, ratios: Mapping[str, float]) -> float:
        if self.ctx.budget.measured:
            return self.ctx.resource_ratio(ratios)
        shapes = self.ctx.space.layer_shapes(self.ctx.space.kept_for(ratios))
        cost = self.residual
        for layer, layer_cost in self.terms:
            shape = shapes[layer.name]
            if shape is None:  # dropped with its block
                continue
            cin, cout, density = shape
            f_in = 1.0 if layer.kind == "dwconv" else cin / layer.in_channels
            cost += layer_cost * cout / layer.out_channels * f_in * density
        return cost / self.total


class PruningEnv(gym.Env[np.ndarray, np.ndarray]):
    """One step per group in forward order; the action is the group's pruning ratio.

    The action wall raises a ratio whenever the rest of the groups, pruned as far as allowed,
    could no longer bring the plan under the budget, so every episode ends inside it. The wall
    bisects on the estimate; the finished plan is checked with the exact `ctx.resource_ratio`
    and, if the estimate was optimistic, pushed towards the ceilings until it fits.
    The reward is always 0: it needs the plan's accuracy, which the agent learns later.
    """

    def __init__(self, ctx: SearchContext, lower: float, upper: float) -> None:
        self.ctx, self.lower, self.upper = ctx, lower, upper
        self.dims = ctx.space.dimensions
        # Latency is finally judged by the LUT during search but re-measured at the end: keep a margin.
        self.target = ctx.budget.target_ratio * (0.98 if ctx.budget.measured else 1.0)
        self.estimate = ResourceEstimate(ctx)
        self._exact_cache: dict[tuple[int, ...], float] = {}
        self.ceilings = {d.name: min(upper, d.max_ratio) for d in self.dims}
        if self.exact(self.ceilings) > self.target:  # `upper` alone cannot reach the budget
            self.ceilings = {d.name: d.max_ratio for d in self.dims}
        self.observation_space = gym.spaces.Box(0.0, 1.0, (N_FEATURES,), np.float32)
        self.action_space = gym.spaces.Box(lower, upper, (1,), np.float32)
        rows = np.array([[d.layer.index, GRANULARITY_CODE.get(d.granularity, KIND[d.layer.kind]),
                          d.layer.in_channels, d.layer.out_channels,
                          d.layer.stride, d.layer.kernel, d.layer.params, d.layer.flops] for d in self.dims], float)
        self.static = rows / np.maximum(rows.max(axis=0), 1e-12)
        self.static[:, 1] = rows[:, 1]  # the kind code is already in [0, 1]
        self.ratios: dict[str, float] = {}
        self.resource = 1.0  # exact resource ratio of the finished plan

    def exact(self, ratios: Mapping[str, float]) -> float:
        key = tuple(self.ctx.space.kept_for(ratios).values())
        if key not in self._exact_cache:
            self._exact_cache[key] = self.ctx.resource_ratio(ratios)
        return self._exact_cache[key]

    def _rest(self, at_ceiling: bool) -> dict[str, float]:
        return {d.name: self.ratios.get(d.name, self.ceilings[d.name] if at_ceiling else 0.0) for d in self.dims}

    def _obs(self) -> np.ndarray:
        t = min(len(self.ratios), len(self.dims) - 1)
        unpruned_rest = self.estimate(self._rest(at_ceiling=False))
        removed = 1.0 - unpruned_rest
        remaining = unpruned_rest - self.estimate(self._rest(at_ceiling=True))  # what the rest can still remove
        previous = self.ratios[self.dims[len(self.ratios) - 1].name] if self.ratios else 0.0
        obs = np.concatenate([self.static[t], [removed, remaining, previous]])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.ratios, self.resource = {}, 1.0
        return self._obs(), {}

    def wall(self, name: str, ratio: float) -> float:
        """The smallest ratio >= `ratio` that keeps the budget reachable with the rest at their ceilings."""
        plan = self._rest(at_ceiling=True)
        if self.estimate({**plan, name: ratio}) <= self.target:
            return ratio
        lo, hi = ratio, self.ceilings[name]
        for _ in range(WALL_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.estimate({**plan, name: mid}) <= self.target else (mid, hi)
        return hi

    def _repair(self) -> None:
        """Move the plan towards the ceilings (all at ceiling fits, see __init__) until it fits exactly."""
        start = dict(self.ratios)

        def at(s: float) -> dict[str, float]:
            return {n: r + s * (self.ceilings[n] - r) for n, r in start.items()}

        lo, hi = 0.0, 1.0
        for _ in range(REPAIR_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.exact(at(mid)) <= self.target else (mid, hi)
        self.ratios = at(hi)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        dim = self.dims[len(self.ratios)]
        asked = float(np.clip(np.asarray(action, float).reshape(-1)[0], self.lower, self.upper))
        ratio = self.wall(dim.name, min(asked, self.ceilings[dim.name]))
        self.ratios[dim.name] = ratio
        done = len(self.ratios) == len(self.dims)
        if done:
            if self.exact(self.ratios) > self.target:
                self._repair()
            self.resource = self.exact(self.ratios)
        return self._obs(), 0.0, done, False, {"asked": asked, "ratio": ratio}


def truncated_normal(rng: np.random.Generator, mu: float, sigma: float, lo: float, hi: float) -> float:
    """A normal sample around `mu` restricted to [lo, hi] (rejection; clipped mean as a last resort)."""
    for _ in range(100):
        x = float(rng.normal(mu, sigma))
        if lo <= x <= hi:
            return x
    return min(max(mu, lo), hi)


def episode_reward(kind: str, val_acc: float, flops: int) -> float:
    """AMC's rewards: accuracy_guaranteed = -Error·log(FLOPs), resource_constrained = -Error."""
    error = 1.0 - val_acc
    return -error * math.log(max(flops, 1)) if kind == "accuracy_guaranteed" else -error


@dataclass
class Episode:
    index: int
    noise: float | None  # None: a random warm-up episode
    transitions: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]  # obs, next obs, scaled action, done
    asked: list[float]  # actions before the wall, for inspection
    resource_ratio: float


class AMCAgent(Agent):
    resumes_by_replay = True

    def __init__(self, ctx: SearchContext, episodes: int = 120, warmup_episodes: int = 20,
                 reward: str = "accuracy_guaranteed", lower: float = 0.0, upper: float = 0.8,
                 noise_sigma: float = 0.5, noise_decay: float = 0.95, baseline_momentum: float = 0.95,
                 batch_size: int = 64, learning_rate: float = 1e-3) -> None:
        super().__init__(ctx)
        self.episodes, self.warmup_episodes, self.reward_kind = episodes, warmup_episodes, reward
        self.lower, self.upper = lower, upper
        self.noise_sigma, self.noise_decay, self.momentum = noise_sigma, noise_decay, baseline_momentum
        self.batch_size = batch_size
        self.env = PruningEnv(ctx, lower, upper)
        self.rng = np.random.default_rng(ctx.seed)
        # SB3 draws from the global NumPy/torch generators (network init, replay sampling): give it
        # generators of its own so the search depends only on ctx.seed and leaves the process's alone.
        self._np_state: Any = np.random.RandomState(ctx.seed).get_state()
        self._torch_state = torch.Generator().manual_seed(ctx.seed).get_state()
        with self._own_rng():
            self.model = DDPG("MlpPolicy", self.env, learning_rate=learning_rate, batch_size=batch_size,
                              buffer_size=max(1, episodes * len(self.env.dims)), learning_starts=0,
                              gamma=1.0, tau=0.01, action_noise=None, seed=ctx.seed, device="cpu", verbose=0)
        self.model.set_logger(configure(None, []))
        self.baseline: float | None = None
        self._suggested = 0
        self._pending: dict[int, Episode] = {}
        self._observed: list[Evaluation] = []
        self._rows: list[dict[str, Any]] = []
        self._best: Evaluation | None = None
        # Episodes see latency through the lookup table only; for a latency budget the best plans are
        # then timed on the device, best validation accuracy first, and the first that meets it wins.
        self._to_confirm: list[Evaluation] | None = None
        self._confirming: dict[int, Evaluation] = {}

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run SB3 on this agent's NumPy/torch generator states; the caller's are put back after."""
        outer_np, outer_py = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            np.random.set_state(self._np_state)
            torch.set_rng_state(self._torch_state)
            try:
                yield
            finally:
                self._np_state, self._torch_state = np.random.get_state(), torch.get_rng_state()
                np.random.set_state(outer_np)
                random.setstate(outer_py)

    def planned_evaluations(self) -> int:
        return self.episodes + (CONFIRM_BATCH if self.ctx.budget.measured else 0)

    def _confirm(self) -> list[Candidate]:
        if self._to_confirm is None:
            ranked = sorted((r for r in self._observed if r.meets_budget and r.val_acc is not None),
                            key=lambda r: -(r.val_acc or 0.0))
            seen: set[tuple[tuple[str, float], ...]] = set()
            self._to_confirm = []
            for r in ranked:
                key = tuple(sorted(r.candidate.ratios.items()))
                if key not in seen:
                    seen.add(key)
                    self._to_confirm.append(r)
            self._to_confirm = self._to_confirm[:CONFIRM_MAX]
        batch, self._to_confirm = self._to_confirm[:CONFIRM_BATCH], self._to_confirm[CONFIRM_BATCH:]
        out = []
        for r in batch:
            cand = self.candidate(r.candidate.ratios, accuracy=False, latency="measured", short_steps=0,
                                  confirms_episode=r.candidate.tag.get("episode"))
            self._confirming[cand.id] = r
            out.append(cand)
        return out

    def _rollout(self, index: int) -> tuple[dict[str, float], Episode]:
        warmup = index < self.warmup_episodes
        noise = None if warmup else self.noise_sigma * self.noise_decay ** (index - self.warmup_episodes)
        obs, _ = self.env.reset()
        states, asked, done = [obs], [], False
        while not done:
            if noise is None:
                action = float(self.rng.uniform(self.lower, self.upper))
            else:
                action = float(self.model.predict(obs, deterministic=True)[0].reshape(-1)[0])
                if noise > 0:
                    action = truncated_normal(self.rng, action, noise, self.lower, self.upper)
            obs, _, done, _, info = self.env.step(np.array([action], np.float32))
            states.append(obs)
            asked.append(info["asked"])
        # The buffer holds the ratios actually evaluated (after the wall and any repair), in the
        # policy's [-1, 1] action scale.
        ratios = dict(self.env.ratios)
        scaled = self.model.policy.scale_action(np.array([[ratios[d.name]] for d in self.env.dims], np.float32))
        last = len(self.env.dims) - 1
        transitions = [(states[t], states[t + 1], np.clip(scaled[t:t + 1], -1, 1), t == last) for t in range(last + 1)]
        return ratios, Episode(index, noise, transitions, asked, self.env.resource)

    def suggest(self) -> list[Candidate]:
        if self._pending:
            raise RuntimeError("amc: observe the previous candidates before asking for more")
        if self._suggested >= self.episodes:
            return self._confirm() if self.ctx.budget.measured and self._best is None else []
        size = WARMUP_BATCH if self._suggested < self.warmup_episodes else POLICY_BATCH
        end = min(self._suggested + size, self.episodes)
        if self._suggested < self.warmup_episodes:
            end = min(end, self.warmup_episodes)  # the first policy episodes wait for training
        latency: LatencyMode = "lut" if self.ctx.budget.measured else "none"
        out = []
        for index in range(self._suggested, end):
            ratios, episode = self._rollout(index)
            cand = self.candidate(ratios, accuracy=True, latency=latency, short_steps=0, episode=index)
            self._pending[cand.id] = episode
            out.append(cand)
        self._suggested = end
        return out

    def observe(self, results: Sequence[Evaluation]) -> None:
        if results and results[0].candidate.id in self._confirming:
            for r in sorted(results, key=lambda r: r.candidate.id):  # suggested best accuracy first
                scored = self._confirming.pop(r.candidate.id)
                if r.meets_budget and self._best is None:
                    self._best = replace(r, val_acc=scored.val_acc)
                self.ctx.emit({"type": "amc_confirm", "episode": scored.candidate.tag.get("episode"),
                               "latency_ratio": r.latency_ratio, "meets_budget": r.meets_budget})
            if self._best is None and not self._to_confirm:
                self._to_confirm = []  # nothing left to try: the search ends without a plan
            return
        buffer = self.model.replay_buffer
        assert buffer is not None
        for result in sorted(results, key=lambda r: r.candidate.id):
            episode = self._pending.pop(result.candidate.id)
            acc = result.val_acc or 0.0
            reward = episode_reward(self.reward_kind, acc, result.flops)
            self.baseline = reward if self.baseline is None else \
                self.momentum * self.baseline + (1 - self.momentum) * reward
            advantage = np.array([reward - self.baseline], np.float32)
            for obs, next_obs, action, done in episode.transitions:
                buffer.add(obs[None], next_obs[None], action, advantage, np.array([done]), [{}])
            self._observed.append(result)
            if len(self._observed) >= self.warmup_episodes:  # from the last warm-up episode on
                with self._own_rng():
                    self.model.train(gradient_steps=len(episode.transitions), batch_size=self.batch_size)
            if result.meets_budget and result.val_acc is not None and not self.ctx.budget.measured and \
                    (self._best is None or result.val_acc > (self._best.val_acc or 0.0)):
                self._best = result
            self._rows.append({"episode": episode.index, "reward": reward, "val_acc": result.val_acc,
                               "resource_ratio": episode.resource_ratio, "ratios": dict(result.candidate.ratios)})
            self.ctx.emit({"type": "amc_episode", "episode": episode.index, "reward": reward,
                           "val_acc": result.val_acc, "resource_ratio": episode.resource_ratio,
                           "noise": episode.noise})

    def best(self) -> Evaluation | None:
        return self._best

    def summary(self) -> dict[str, Any]:
        best = self._best.candidate.tag.get("episode") if self._best else None
        return {"episodes": list(self._rows), "best_episode": best}

    def save(self, folder: Path) -> list[str]:
        self.model.save(Path(folder) / "amc_agent.zip")
        return ["amc_agent.zip"]
