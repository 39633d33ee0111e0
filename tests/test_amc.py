"""AMC: the environment, the action wall, the reward, and the hand-driven DDPG loop.

The driver is replaced by fake evaluations with chosen accuracies, so rewards are known exactly
and each test runs in about a second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from agents.amc import N_FEATURES, AMCAgent, PruningEnv, episode_reward
from agents.base import Candidate, Evaluation, SearchContext
from agents.budget import Budget
from search_spaces.space import PruningSpace
from tests.conftest import make_space


@pytest.fixture(scope="module")
def space() -> PruningSpace:
    return make_space("small_cnn", 8, round_to=2)


def flops_ctx(space: PruningSpace, target: float, events: list[dict[str, Any]] | None = None) -> SearchContext:
    return SearchContext(space, Budget("flops", target * space.flops, float(space.flops)), seed=0,
                         emit=(events.append if events is not None else lambda e: None))


class FakeLUT:
    """Latency linear in the kept channels, plus a constant: enough to exercise the latency path."""

    def __init__(self, space: PruningSpace) -> None:
        self.weights = {d.name: float(i + 1) for i, d in enumerate(space.dimensions)}
        self.unpruned = {d.name: d.units for d in space.dimensions}

    def predict(self, kept: Mapping[str, int]) -> float:
        return 5.0 + sum(self.weights[n] * k for n, k in kept.items())

    def ratio(self, kept: Mapping[str, int]) -> float:
        return self.predict(kept) / self.predict(self.unpruned)


def fake_results(cands: list[Candidate], accs: list[float], flops: int = 1000) -> list[Evaluation]:
    return [Evaluation(c, flops=flops, params=1, meets_budget=True, val_acc=a)
            for c, a in zip(cands, accs, strict=True)]


def run(agent: AMCAgent, acc: float = 0.5) -> list[Candidate]:
    seen: list[Candidate] = []
    while cands := agent.suggest():
        seen += cands
        agent.observe(fake_results(cands, [acc] * len(cands)))
    return seen


def constant_policy(agent: AMCAgent, monkeypatch: pytest.MonkeyPatch, value: float) -> list[np.ndarray]:
    calls: list[np.ndarray] = []

    def predict(obs: np.ndarray, deterministic: bool = False) -> tuple[np.ndarray, None]:
        calls.append(obs)
        return np.array([value], np.float32), None

    monkeypatch.setattr(agent.model, "predict", predict)
    return calls


def test_observations_are_normalised_layer_descriptors(space: PruningSpace) -> None:
    env = PruningEnv(flops_ctx(space, 0.5), 0.0, 0.8)
    obs, _ = env.reset()
    assert obs.shape == (N_FEATURES,) and obs.dtype == np.float32
    assert env.action_space.shape == (1,)
    removed = [obs[8]]
    for step, dim in enumerate(space.dimensions):
        assert env.observation_space.contains(obs)
        assert obs[0] == pytest.approx(dim.layer.index / max(d.layer.index for d in space.dimensions))
        obs, reward, done, truncated, info = env.step(np.array([0.3], np.float32))
        assert reward == 0.0 and not truncated
        assert done == (step == len(space.dimensions) - 1)
        assert obs[10] == pytest.approx(info["ratio"])  # previous action
        removed.append(obs[8])
    assert env.observation_space.contains(obs)
    assert removed == sorted(removed) and removed[-1] > removed[0]  # resource removed so far grows


@pytest.mark.parametrize("target", [0.3, 0.6])
def test_wall_keeps_every_episode_in_budget_when_the_policy_asks_for_nothing(
        space: PruningSpace, target: float, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = flops_ctx(space, target)
    agent = AMCAgent(ctx, episodes=4, warmup_episodes=1, lower=0.0, noise_sigma=0.0)
    constant_policy(agent, monkeypatch, 0.0)
    cands = run(agent)
    assert len(cands) == 4
    for c in cands[1:]:
        assert ctx.resource_ratio(c.ratios) <= target
        assert any(r > 0 for r in c.ratios.values()), "the wall must have raised some ratio"
        assert all(0 <= r <= space.dimension(n).max_ratio for n, r in c.ratios.items())


def test_wall_on_a_deeper_model() -> None:
    deep = make_space("resnet20", 8)
    env = PruningEnv(flops_ctx(deep, 0.4), 0.0, 0.8)
    env.reset()
    asked_nothing = [env.step(np.array([0.0], np.float32))[4]["ratio"] for _ in deep.dimensions]
    assert asked_nothing[0] == 0.0  # early groups are free; the wall only acts when needed
    assert asked_nothing[-1] > 0.0
    assert env.ratios == dict(zip([d.name for d in deep.dimensions], asked_nothing, strict=True)), \
        "the conservative estimate should need no repair"
    assert env.resource == pytest.approx(env.ctx.resource_ratio(env.ratios)) and env.resource <= 0.4


def test_exact_check_repairs_an_optimistic_estimate(space: PruningSpace) -> None:
    env = PruningEnv(flops_ctx(space, 0.3), 0.0, 0.8)
    env.estimate = lambda ratios: 0.0  # type: ignore[assignment,method-assign]  # the wall never acts
    env.reset()
    for _ in space.dimensions:
        env.step(np.array([0.0], np.float32))
    assert env.ctx.resource_ratio(env.ratios) <= 0.3
    assert env.resource <= 0.3


def test_latency_budget_keeps_a_margin_and_asks_for_lut(space: PruningSpace) -> None:
    lut = FakeLUT(space)
    base = lut.predict({d.name: d.units for d in space.dimensions})
    ctx = SearchContext(space, Budget("latency_ms", 0.5 * base, base), seed=0, lut=lut)  # type: ignore[arg-type]
    agent = AMCAgent(ctx, episodes=3, warmup_episodes=2)
    episodes: list[Candidate] = []
    while (batch := agent.suggest())[0].latency == "lut":
        episodes += batch
        assert agent.best() is None, "a table prediction alone never returns a plan for a latency budget"
        agent.observe(fake_results(batch, [0.7 if c.tag["episode"] == 2 else 0.5 for c in batch]))
    assert len(episodes) == 3
    assert all(c.accuracy and c.short_steps == 0 for c in episodes)
    assert all(ctx.resource_ratio(c.ratios) <= 0.5 * 0.98 + 1e-12 for c in episodes)
    confirm = batch  # then the device has the last word, best validation accuracy first
    assert all(c.latency == "measured" and not c.accuracy for c in confirm)
    assert confirm[0].ratios == episodes[-1].ratios
    measured = [Evaluation(c, flops=1000, params=1, meets_budget=i > 0, latency_ratio=0.5)
                for i, c in enumerate(confirm)]
    agent.observe(measured)
    best = agent.best()
    assert best is not None and best.candidate is confirm[1] and best.val_acc == 0.5  # the first one missed
    assert agent.suggest() == []


def test_reward_formula() -> None:
    assert episode_reward("accuracy_guaranteed", 0.7, 1000) == pytest.approx(-0.3 * math.log(1000))
    assert episode_reward("resource_constrained", 0.7, 1000) == pytest.approx(-0.3)


def test_warmup_is_random_then_the_policy_acts(space: PruningSpace, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = AMCAgent(flops_ctx(space, 0.95), episodes=6, warmup_episodes=3, noise_sigma=0.0)
    calls = constant_policy(agent, monkeypatch, 0.37)
    warm = agent.suggest()
    assert len(warm) == 3 and not calls, "warm-up episodes must not ask the policy"
    warm_ratios = [tuple(c.ratios.values()) for c in warm]
    assert len(set(warm_ratios)) == 3 and all(r != 0.37 for rs in warm_ratios for r in rs)
    agent.observe(fake_results(warm, [0.5, 0.6, 0.7]))
    later = agent.suggest()
    assert len(later) == 2 and len(calls) == 2 * len(space.dimensions)
    assert all(r == pytest.approx(0.37) for c in later for r in c.ratios.values())


def test_noise_explores_around_the_policy(space: PruningSpace, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = AMCAgent(flops_ctx(space, 0.95), episodes=4, warmup_episodes=1, noise_sigma=0.2, upper=0.6)
    constant_policy(agent, monkeypatch, 0.3)
    cands = run(agent)
    ratios = [r for c in cands[1:] for r in c.ratios.values()]
    assert len(set(ratios)) == len(ratios) and all(0.0 <= r <= 0.6 for r in ratios)


def test_replay_buffer_gets_every_step_with_the_baselined_reward(space: PruningSpace) -> None:
    events: list[dict[str, Any]] = []
    agent = AMCAgent(flops_ctx(space, 0.5, events), episodes=4, warmup_episodes=2, baseline_momentum=0.5,
                     batch_size=4)
    actor_before = [p.detach().clone() for p in agent.model.actor.parameters()]
    accs, flops = [0.5, 0.6, 0.9, 0.7], 1000
    cands: list[Candidate] = []
    while batch := agent.suggest():
        results = fake_results(batch, accs[len(cands):len(cands) + len(batch)], flops)
        cands += batch
        agent.observe(results)
    steps = len(space.dimensions)
    buffer = agent.model.replay_buffer
    assert buffer is not None and buffer.size() == 4 * steps
    rewards = [episode_reward("accuracy_guaranteed", a, flops) for a in accs]
    baseline, expected = rewards[0], []
    for r in rewards:
        baseline = 0.5 * baseline + 0.5 * r
        expected += [r - baseline] * steps
    assert buffer.rewards[:4 * steps, 0] == pytest.approx(expected, abs=1e-5)
    assert list(buffer.dones[:4 * steps, 0]) == [0.0] * (steps - 1) + [1.0] + ([0.0] * (steps - 1) + [1.0]) * 3
    applied = agent.model.policy.unscale_action(buffer.actions[:4 * steps, 0])
    assert applied[:, 0] == pytest.approx([r for c in cands for r in c.ratios.values()], abs=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, agent.model.actor.parameters(), strict=True))
    summary = agent.summary()
    assert [row["reward"] for row in summary["episodes"]] == pytest.approx(rewards)
    assert summary["best_episode"] == 2 and agent.best() is not None and agent.best().val_acc == 0.9
    assert [e["episode"] for e in events if e["type"] == "amc_episode"] == [0, 1, 2, 3]


def test_same_seed_same_candidates_whatever_else_uses_the_global_generators(space: PruningSpace) -> None:
    def candidates(disturb: int) -> list[dict[str, float]]:
        agent = AMCAgent(flops_ctx(space, 0.5), episodes=5, warmup_episodes=2, batch_size=4)
        out = []
        while batch := agent.suggest():
            np.random.seed(disturb)
            torch.manual_seed(disturb)
            state = np.random.get_state()[1].copy()
            agent.observe(fake_results(batch, [0.5] * len(batch)))
            assert np.array_equal(np.random.get_state()[1], state), "the agent must not touch the global generator"
            out += [dict(c.ratios) for c in batch]
        return out

    assert candidates(1) == candidates(2)
