"""Paddle Billing via the official SDK (paddle-python-sdk): one client per tenant, its
calls in threads, errors normalised onto paystream's vocabulary."""

from paystream.gateways.paddle.errors import map_paddle_answer
from paystream.gateways.paddle.gateway import PADDLE_CAPABILITIES, PaddleGateway

__all__ = ["PADDLE_CAPABILITIES", "PaddleGateway", "map_paddle_answer"]
