"""The canary's pure parts: the sticky draw, the router's choice and fallback, and the window's verdict."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from helpers.project import REPO

from visionloop.config import Settings
from visionloop.contracts import ArmCounters, CanaryState
from visionloop.params import CanaryParams
from visionloop.promotion.canary_window import ArmAnswers, CanaryWindow, judge
from visionloop.serving.canary import CANARY_ARM, CHAMPION_ARM, CanaryRouter, in_canary

STATE = CanaryState(version="2", champion="1", share=0.3, started_at="2026-12-02T10:00:00+00:00", trigger="test",
                    gated=True)
EVEN = {str(k): 30 for k in range(10)}  # 300 answers, every class alike


@pytest.fixture(scope="module")
def rules() -> CanaryParams:
    canary = Settings.load(REPO).params.promotion.canary
    return canary.model_copy(update={"min_predictions": 200, "window_seconds": 60, "max_seconds": 600})


def window(elapsed: float, canary: dict[str, int], champion: dict[str, int] = EVEN, *, canary_conf: float = 0.9,
           counters: dict[str, ArmCounters] | None = None) -> CanaryWindow:
    return CanaryWindow(STATE, elapsed, ArmAnswers(champion, 0.9 * sum(champion.values())),
                        ArmAnswers(canary, canary_conf * sum(canary.values())), counters or {})


def test_a_client_key_always_draws_the_same_arm_and_the_share_holds() -> None:
    keys = [f"client-{i}" for i in range(4000)]
    first = [in_canary(STATE, key) for key in keys]
    assert first == [in_canary(STATE, key) for key in keys]  # sticky
    assert abs(sum(first) / len(keys) - STATE.share) < 0.03
    other = CanaryState("3", "1", 0.3, "2026-12-02T11:00:00+00:00", "test", True)  # another canary draws anew
    assert [in_canary(other, key) for key in keys] != first
    assert not any(in_canary(CanaryState("2", "1", 0.0, STATE.started_at, "t", True), key) for key in keys[:100])


def test_nothing_is_judged_before_min_predictions_and_too_little_traffic_rolls_back(rules: CanaryParams) -> None:
    waiting = judge(rules, window(500, {"3": 199}))
    assert waiting.action == "wait" and "199 of 200" in waiting.reason
    starved = judge(rules, window(600, {"3": 199}))
    assert starved.action == "rollback" and "not enough traffic" in starved.reason


def test_no_alarm_finishes_only_after_the_window(rules: CanaryParams) -> None:
    assert judge(rules, window(30, EVEN)).action == "wait"
    verdict = judge(rules, window(60, EVEN))
    assert verdict.action == "finish" and verdict.alarms == []
    assert verdict.figures["label_shift"] == 0.0 and verdict.figures["confidence_drop"] == pytest.approx(0.0)


def test_a_class_the_challenger_no_longer_answers_rolls_back_at_once(rules: CanaryParams) -> None:
    lost = {**EVEN, "3": 0, "8": 60}  # every 3 answered as an 8
    verdict = judge(rules, window(5, lost))
    assert verdict.action == "rollback"
    assert "predicted classes drifted" in verdict.reason and "class 3: 10.0 % → 0.0 %" in verdict.reason


def test_confidence_errors_and_latency_each_roll_back(rules: CanaryParams) -> None:
    unsure = judge(rules, window(5, EVEN, canary_conf=0.8))
    assert unsure.action == "rollback" and "mean confidence" in unsure.reason
    # Every challenger forward failed: nothing was logged for it, the counted requests are judged.
    failing = judge(rules, window(5, {}, counters={CANARY_ARM: ArmCounters(250, 250, 1.0)}))
    assert failing.action == "rollback" and "error rate 1.000" in failing.reason
    slow = {CANARY_ARM: ArmCounters(300, 0, 300 * 0.020), CHAMPION_ARM: ArmCounters(300, 0, 300 * 0.005)}
    late = judge(rules, window(5, EVEN, counters=slow))
    assert late.action == "rollback" and "latency 4.00×" in late.reason


@dataclass
class StandIn:
    """What the router reads of a model: its version and channel count."""

    version: str
    channels: int = 1


class HeldChallenger:
    def __init__(self, model: StandIn | None) -> None:
        self.model = model

    def current(self) -> StandIn | None:
        return self.model


def test_the_router_sends_the_share_to_the_loaded_canary_version_only() -> None:
    champion = StandIn("1")
    router = CanaryRouter(None, HeldChallenger(StandIn("2")), poll_seconds=1)  # type: ignore[arg-type]
    assert router.choose(champion, "k").arm == CHAMPION_ARM  # no canary
    router.state = CanaryState("2", "1", 1.0, STATE.started_at, "test", True)
    assert router.choose(champion, "k").model.version == "2"
    router.challenger = HeldChallenger(StandIn("5"))  # the challenger alias moved: not the canary's version
    assert router.choose(champion, "k").arm == CHAMPION_ARM
    router.challenger = HeldChallenger(StandIn("2", channels=3))  # reads other images than the champion
    assert router.choose(champion, "k").arm == CHAMPION_ARM


def test_a_failing_canary_forward_is_answered_by_the_champion_and_counted() -> None:
    champion = StandIn("1")
    router = CanaryRouter(None, HeldChallenger(StandIn("2")), poll_seconds=1)  # type: ignore[arg-type]
    router.state = CanaryState("2", "1", 1.0, STATE.started_at, "test", True)

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        route = router.choose(champion, None)
        failed = loop.create_future()
        failed.set_exception(RuntimeError("the challenger's forward broke"))

        def resubmit(model: StandIn) -> asyncio.Future:
            answered = loop.create_future()
            answered.set_result(f"answered by v{model.version}")
            return answered

        return await router.settle(route, failed, resubmit, champion)  # type: ignore[arg-type]

    assert asyncio.run(scenario()) == "answered by v1"
    assert router.counters[CANARY_ARM].requests == 1 and router.counters[CANARY_ARM].failed == 1
