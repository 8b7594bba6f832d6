"""Bridges from vmtr's protocol, rewards and advantages to other training frameworks."""
