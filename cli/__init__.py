"""The ``compound-gateway`` command line: the top layer.

It dispatches to the compound daemon, the district platform and the simulators.
"""
