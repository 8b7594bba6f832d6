"""Reinforcement learning on the agent's own protocol."""
