"""In-process simulated provider with Stripe's test-card semantics and state in Redis."""

from paystream.gateways.simulator.cards import CARDS, Behaviour, TestCard
from paystream.gateways.simulator.gateway import SIMULATOR_CAPABILITIES, SimulatorGateway
from paystream.gateways.simulator.options import SimulatorOptions
from paystream.gateways.simulator.store import Effect

__all__ = [
    "CARDS",
    "SIMULATOR_CAPABILITIES",
    "Behaviour",
    "Effect",
    "SimulatorGateway",
    "SimulatorOptions",
    "TestCard",
]
