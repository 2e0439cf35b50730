"""The compound daemon; it never imports the district side.

Configuration, intake (HTTP and MQTT), the outbox, the watch-list matcher, the forwarder to the
district, and the runtime that wires them.
"""
