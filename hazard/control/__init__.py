from hazard.control.controller import PolicyController, features_from_packets
from hazard.control.policies import POLICY_NAMES, build_policy

__all__ = ["POLICY_NAMES", "PolicyController", "build_policy", "features_from_packets"]
