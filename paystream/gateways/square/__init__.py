"""Square via the official SDK (squareup): one AsyncSquare client per tenant, errors
normalised onto paystream's vocabulary."""

from paystream.gateways.square.errors import map_square_answer
from paystream.gateways.square.gateway import SQUARE_CAPABILITIES, SquareGateway

__all__ = ["SQUARE_CAPABILITIES", "SquareGateway", "map_square_answer"]
