"""The round's pure rules: schedule, round entries and the assignment, fixed-point aggregation,
commit records and the quorum, reducer slices and their audits.

No network, no asyncio: the async shell (potluck.engine, over the exchange and the DHT) composes them.
"""
