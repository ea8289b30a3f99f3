"""The round engine's pure core: schedule, fixed-point aggregation, commit records.

No network, no asyncio: the async shell (averager, DHT, exchange) composes these functions.
"""
