"""Shipped per-device profiles (``<device-key>.yaml``), read after the user's profile dir."""
