"""The district side and the way there: uplink protocol, gateway publisher, ingester, event stores."""
