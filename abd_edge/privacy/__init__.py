"""Differential privacy for local updates: DP-SGD glue (Opacus), the privacy ledger, and audits.

``PrivacyConfig`` lives in :mod:`abd_edge.privacy.config` (torch-free, so the device
runtime can take one); the training glue imports Opacus only when a private
update runs.
"""

from .config import PrivacyConfig, encode_epsilon
from .ledger import epsilon_of, ledger_from_history, summarize

__all__ = ["PrivacyConfig", "encode_epsilon", "epsilon_of", "ledger_from_history", "summarize"]
