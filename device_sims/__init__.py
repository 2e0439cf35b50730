"""Simulated vendor devices that speak each supported dialect over its real transport."""
