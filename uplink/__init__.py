"""What both ends of the compound -> district link share.

The wire protocol (topics, batches, receipts, watch-list documents), the broker and store
configuration, and the event stores: the district's ingester writes them, and so does a compound in
direct mode.
"""
